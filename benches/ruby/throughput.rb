# frozen_string_literal: true

# Steps/s of no-op Ruby handlers through the gem: the Ruby side of the throughput harness.
#
#   ruby benches/ruby/throughput.rb [STORE_URL] [TASKS] [CONCURRENCY]
#
# Creates TASKS tasks of the 5-step diamond template, runs one Worker until idle and divides the
# steps by the run's wall time (the same workload as `throughput --template diamond`).
require "tasker_core"

DIAMOND = <<~YAML
  namespace: bench
  name: diamond
  version: 1.0.0
  steps:
    - {name: a, handler: noop}
    - {name: b, handler: noop, depends_on: [a]}
    - {name: c, handler: noop, depends_on: [a]}
    - {name: d, handler: noop, depends_on: [a]}
    - {name: e, handler: noop, depends_on: [b, c, d]}
YAML

url = ARGV[0] || "memory:"
tasks = Integer(ARGV[1] || 5000)
concurrency = Integer(ARGV[2] || 64)
engine = TaskerCore::Engine.new(url)
engine.register_template(DIAMOND)
tasks.times { |i| engine.create_task("bench", "diamond", context: { i: i }) }
worker = TaskerCore::Worker.new(engine, concurrency: concurrency)
worker.handler("noop") { |_step| nil }
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
report = worker.run_until_idle(timeout: 600)
elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
done = engine.list_tasks(status: "complete", limit: tasks + 1).size
abort "only #{done} of #{tasks} tasks completed: #{report}" unless done == tasks
puts format("ruby store=%s tasks=%d steps=%d concurrency=%d run=%.3fs => %.0f steps/s",
            url, tasks, tasks * 5, concurrency, elapsed, tasks * 5 / elapsed)
engine.close
