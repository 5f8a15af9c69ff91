# frozen_string_literal: true

# Rake tasks of the tasker_core Railtie.

namespace :tasker_core do
  desc "Run a Tasker Core worker with every TaskerCore::StepHandler subclass of the app " \
       "(CONCURRENCY=n overrides config.tasker_core.concurrency); INT or TERM stops it cleanly"
  task work: :environment do
    # Handler classes live in app/handlers (or wherever the app autoloads them): load them all.
    Rails.application.eager_load!
    engine = TaskerCore.engine
    abort "tasker_core: no engine (is the tasker_core Railtie loaded?)" if engine.nil?

    concurrency = Integer(ENV.fetch("CONCURRENCY", Rails.application.config.tasker_core.concurrency))
    worker = TaskerCore::Worker.new(engine, concurrency: concurrency)
    worker.register_handlers(TaskerCore::StepHandler.registry)
    # The handler classes the templates name (Rails Tasker's handler_class).
    worker.autoload_handlers
    if worker.handlers.empty?
      abort "tasker_core: no handlers found; define TaskerCore::StepHandler subclasses in app/handlers " \
            "(class ChargeHandler < TaskerCore::StepHandler; def call(step) ... end; end), or name " \
            "handler classes in the templates"
    end
    $stdout.puts "tasker_core: worker #{worker.worker_id} on #{Rails.application.config.tasker_core.database_url}, " \
                 "concurrency #{concurrency}, handlers #{worker.handlers.sort.join(', ')}"
    $stdout.flush
    counts = worker.run
    $stdout.puts "tasker_core: stopped (#{counts['completed']} completed, #{counts['failed']} failed, " \
                 "#{counts['lost']} lost)"
  end

  desc "Print the number of Tasker Core tasks in each status, and the steps ready, running and waiting"
  task status: :environment do
    engine = TaskerCore.engine
    abort "tasker_core: no engine (is the tasker_core Railtie loaded?)" if engine.nil?

    limit = 100_000
    statuses = %w[pending in_progress paused complete error cancelled resolved_manually]
    $stdout.puts "tasks on #{Rails.application.config.tasker_core.database_url}"
    statuses.each do |status|
      count = engine.list_tasks(status: status, limit: limit).size
      $stdout.puts format("  %-18<status>s %<count>s", status: status, count: count >= limit ? "#{count}+" : count)
    end
    work = engine.work_status
    $stdout.puts format("steps: %<ready>d ready, %<running>d running, %<waiting>d waiting for a retry",
                        ready: work["ready"], running: work["running"], waiting: work["waiting"])
  end

  desc "Serve the tasker dashboard of this app's store (tasker serve): BIND=127.0.0.1:8080, " \
       "BASE_PATH=/tasker (the mount point of TaskerCore::Dashboard), TASKER_TOKEN, READ_ONLY=1, " \
       "TASKER_BIN (default: tasker on the PATH)"
  task dashboard: :environment do
    url = Rails.application.config.tasker_core.database_url.to_s
    if url == "memory" || url.start_with?("memory:") || url.include?(":memory:")
      abort "tasker_core: the dashboard runs in its own process and cannot see the in-memory store #{url}; " \
            "set config.tasker_core.database_url to a SQLite file or PostgreSQL"
    end
    bin = ENV.fetch("TASKER_BIN", "tasker")
    program = ->(path) { File.file?(path) && File.executable?(path) }
    found = bin.include?("/") ? program.(bin) : ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).any? { |d| program.(File.join(d, bin)) }
    unless found
      abort "tasker_core: no tasker binary at #{bin.inspect}; build it with `cargo install --path cli` in " \
            "the tasker-core checkout, or set TASKER_BIN to its path"
    end
    # The URL goes in the environment, not the command line (where `ps` would show a password).
    args = ["serve", "--bind", ENV.fetch("BIND", "127.0.0.1:8080"),
            "--base-path", ENV.fetch("BASE_PATH", "/tasker")]
    args << "--read-only" if %w[1 true yes].include?(ENV["READ_ONLY"].to_s.downcase)
    $stdout.flush
    # The dashboard replaces this process (its token, from TASKER_TOKEN, stays in the environment).
    exec({ "TASKER_URL" => url }, bin, *args)
  end
end
