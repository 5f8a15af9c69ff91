# frozen_string_literal: true

require_relative "lib/tasker_core/version"

Gem::Specification.new do |spec|
  spec.name = "tasker_core"
  spec.version = TaskerCore::VERSION
  spec.summary = "Workflow orchestration for Ruby and Rails: DAG tasks, retries, leases and events in a Rust core"
  spec.description = "Tasker Core runs DAG workflows durably on SQLite or PostgreSQL: readiness, " \
                     "retries with backoff, leases, an audit trail and lifecycle events, with a Railtie."
  spec.license = "MIT"
  spec.authors = ["Tasker Core"]
  spec.homepage = "https://example.invalid/tasker-core"
  spec.required_ruby_version = ">= 3.0"
  spec.files = Dir["lib/**/*.{rb,rake}", "ext/tasker_core/{Cargo.toml,extconf.rb}", "ext/tasker_core/src/**/*.rs",
                   "ext/tasker_core/vendor/**/*"].reject { |f| f.include?("/target/") }
  spec.extensions = ["ext/tasker_core/extconf.rb"]
  spec.require_paths = ["lib"]
end
