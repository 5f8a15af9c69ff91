#!/usr/bin/env ruby
# frozen_string_literal: true

# Runs the order-fulfilment example and prints each step's state, attempts and duration.
#
# Usage: ruby examples/ruby/order_fulfilment.rb [STORE_URL]
#        (from a checkout, without installing the gem: ruby -Ibindings-ruby/lib …)
# The store is STORE_URL, else $TASKER_DATABASE_URL, else the engine's default, ./tasker.db.
#
# The workflow is examples/order_fulfilment.yaml, shared with the Rust, Python and C examples:
# validate -> (charge, reserve_stock) -> ship -> notify. charge fails its first attempt with a
# retryable "gateway busy" error and a short retry_after, so a run shows a retry; everything
# else succeeds.

require "json"
require "logger"
require "tasker_core"

# The example's template and handlers, and its command line.
module OrderFulfilment
  module_function

  TEMPLATE = File.read(File.expand_path("../order_fulfilment.yaml", __dir__))

  # The order number of the task's context.
  def order_id(step)
    order = step.context.is_a?(Hash) ? step.context["order"] : nil
    raise TaskerCore::PermanentError, 'context has no integer "order"' unless order.is_a?(Integer)

    order
  end

  # A worker with the five handlers of the example.
  def order_worker(engine, concurrency = 4)
    worker = TaskerCore::Worker.new(engine, concurrency: concurrency)

    worker.handler("validate") { |step| { order: order_id(step), valid: true } }

    worker.handler("charge") do |step|
      raise TaskerCore::RetryableError.new("gateway busy", retry_after: 0.05) if step.attempt == 1

      { charged: true, amount_cents: 4200 }
    end

    worker.handler("reserve_stock") { |_step| { reserved: 1 } }

    worker.handler("ship") do |step|
      charged = step.inputs["charge"].is_a?(Hash) && step.inputs["charge"]["charged"]
      raise TaskerCore::PermanentError, "refusing to ship an unpaid order" unless charged == true

      { tracking: "TRK-#{order_id(step)}" }
    end

    worker.handler("notify") { |step| { notified: true, shipped: !step.inputs["ship"].nil? } }

    worker
  end

  # Registers the template, creates one order task and works it to the end.
  def run(engine, order)
    engine.register_template(TEMPLATE)
    task_id = engine.create_task("shop", "fulfil_order", context: { order: order })
    order_worker(engine, 4).run_until_idle(timeout: 30)
    engine.task(task_id)
  end

  def main(argv)
    TaskerCore.logger = Logger.new($stderr, progname: "tasker_core", level: Logger::WARN)
    url = argv[0] || ENV.fetch("TASKER_DATABASE_URL", nil)
    url = nil if url&.empty?
    begin
      # No URL: the engine's default, the SQLite file ./tasker.db.
      engine = url.nil? ? TaskerCore::Engine.new : TaskerCore::Engine.new(url)
    rescue TaskerCore::Error => e
      warn "error: cannot open the engine: #{e.message}"
      return 1
    end
    task = begin
      run(engine, 42)
    ensure
      engine.close
    end

    puts "task #{task['id']} (#{task['namespace']}/#{task['name']} #{task['version']}) " \
         "on #{url || TaskerCore::DEFAULT_URL}: #{task['status']}"
    puts format("%-14s %-18s %8s %12s  %s", "step", "state", "attempts", "duration_ms", "result")
    task["steps"].each do |step|
      duration = step["duration_ms"].nil? ? "-" : step["duration_ms"].to_s
      result = step["result"].nil? ? "" : JSON.generate(step["result"])
      puts format("%-14s %-18s %8d %12s  %s", step["name"], step["status"], step["attempts"], duration, result)
    end
    if task["status"] != "complete"
      warn "error: the task ended #{task['status']}"
      return 1
    end
    0
  end
end

exit(OrderFulfilment.main(ARGV)) if $PROGRAM_NAME == __FILE__
