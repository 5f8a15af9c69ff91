# frozen_string_literal: true

require_relative "test_helper"

# subscribe: lifecycle events by glob, next(timeout:), dropped, pattern.
module EventsBehaviour
  def drain(sub, quiet: 0.2)
    events = []
    while (event = sub.next(timeout: quiet))
      events << event
    end
    events
  end

  def test_step_events_of_a_run
    @engine.register_template(template("evented", "a", { "name" => "b", "depends_on" => ["a"] }))
    sub = @engine.subscribe("step.*")
    assert_kind_of TaskerCore::Subscription, sub
    assert_equal "step.*", sub.pattern
    assert_nil sub.next(timeout: 0.05) # nothing yet

    id = @engine.create_task("test", "evented")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") do |step|
      raise TaskerCore::RetryableError.new("busy", retry_after: 0.01) if step.attempt == 1

      1
    end
    worker.handler("b") { 2 }
    worker.run_until_idle(timeout: 30)

    events = drain(sub)
    names = events.map { |e| e["name"] }
    assert(names.all? { |n| n.start_with?("step.") }, names.inspect)
    assert_empty %w[step.claimed step.completed step.retry_scheduled] - names
    refute_includes names, "task.completed"
    events.each do |e|
      assert(e.keys.all?(String))
      assert_equal id, e["task_id"]
      assert_includes %w[a b], e["step_name"]
      refute_nil e["step_id"]
      refute_nil e["at"]
    end
    retry_event = events.find { |e| e["name"] == "step.retry_scheduled" }
    assert_equal ["a", 1], retry_event.values_at("step_name", "attempt")
    assert_includes retry_event["detail"].to_s, "busy"
    completed = events.select { |e| e["name"] == "step.completed" }.map { |e| e.values_at("step_name", "attempt") }
    assert_equal [["a", 2], ["b", 1]], completed
    assert_equal 0, sub.dropped
  end

  CUSTOM_EVENTS = <<~YAML
    name: sync
    namespace_name: ev
    version: 1.0.0
    domain_events: [{name: sync.started}]
    steps:
      - name: pull
        handler: {callable: Ev::Pull}
        publishes_events:
          - {name: sync.pulled, condition: success, schema: {type: object, required: [rows]}}
      - name: push
        handler: {callable: Ev::Push}
        dependencies: [pull]
  YAML

  def test_handlers_publish_the_custom_events_their_template_declares
    reg = @engine.register_template(CUSTOM_EVENTS)
    assert_equal "tasker_core", reg["format"]
    assert(reg["warnings"].any? { |w| w.include?("condition") }, reg["warnings"].inspect)
    sub = @engine.subscribe("sync.*")
    id = @engine.create_task("ev", "sync")
    refused = []
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("Ev::Pull") do |step|
      step.publish("sync.started")
      step.publish("sync.pulled", { "rows" => 3 })
      [["sync.pushed", {}], ["sync.pulled", { "cols" => 1 }]].each do |name, payload|
        step.publish(name, payload)
      rescue TaskerCore::InvalidArgumentError => e
        refused << e.message
      end
      1
    end
    worker.handler("Ev::Push") do |step|
      step.publish("sync.pulled", { "rows" => 0 })
    rescue TaskerCore::InvalidArgumentError => e
      refused << e.message
      step.publish(:"sync.started", { "by" => "push" })
    end
    worker.run_until_idle(timeout: 30)
    assert_equal "complete", @engine.task(id)["status"]

    events = drain(sub)
    got = events.map { |e| e.values_at("name", "step_name", "detail") }
    assert_equal [["sync.started", "pull", nil], ["sync.pulled", "pull", { "rows" => 3 }],
                  ["sync.started", "push", { "by" => "push" }]], got
    assert(events.all? { |e| e["task_id"] == id && e["attempt"] == 1 })
    assert_equal 3, refused.size, refused.inspect
    assert_includes refused[0], "sync.pushed"
    assert_includes refused[0], "may publish: sync.pulled, sync.started"
    assert_includes refused[1], "rows"
    assert_includes refused[2], "may publish: sync.started"
  end

  def test_task_events_and_a_catch_all_subscription
    @engine.register_template(template("lifecycle", "a"))
    tasks = @engine.subscribe("task.*")
    everything = @engine.subscribe
    assert_equal "*", everything.pattern
    id = @engine.create_task("test", "lifecycle")
    (a,) = @engine.claim("w", nil, 1)
    @engine.complete(a["step_id"], 1, {})
    task_events = drain(tasks)
    assert_equal %w[task.created task.started task.completed], task_events.map { |e| e["name"] }
    assert(task_events.all? { |e| e["task_id"] == id && e["step_id"].nil? })
    all_names = drain(everything).map { |e| e["name"] }
    assert_empty %w[task.created step.claimed step.completed task.completed] - all_names

    other = @engine.create_task("test", "lifecycle")
    @engine.pause_task(other)
    @engine.resume_task(other)
    @engine.cancel_task(other)
    assert_equal %w[task.created task.paused task.resumed task.cancelled], drain(tasks).map { |e| e["name"] }
  end

  def test_next_waits_for_an_event_published_meanwhile
    @engine.register_template(template("later", "a"))
    sub = @engine.subscribe("task.created")
    creator = Thread.new do
      sleep 0.1
      @engine.create_task("test", "later")
    end
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    event = sub.next(timeout: 5.0)
    creator.join
    refute_nil event
    assert_equal "task.created", event["name"]
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 4.0
  end

  def test_next_without_a_timeout_waits_in_another_thread
    @engine.register_template(template("waited", "a", "b", "c"))
    sub = @engine.subscribe("step.claimed")
    listener = Thread.new { Array.new(3) { sub.next } }
    sleep 0.05
    @engine.create_task("test", "waited")
    @engine.claim("w", nil, 10)
    assert listener.join(10), "next() did not return the events"
    assert_equal %w[a b c], listener.value.map { |e| e["step_name"] }.sort
  end

  def test_a_malformed_pattern_is_an_invalid_argument
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.subscribe("step.[") }
    assert_raises(TypeError) { @engine.subscribe(42) }
  end
end

TaskerTest.on_each_store(EventsBehaviour)
