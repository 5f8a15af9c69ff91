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
end
