# frozen_string_literal: true

require_relative "test_helper"

# Durable cron schedules from Ruby.
module SchedulesBehaviour
  JOB = <<~YAML
    namespace: rb_sched
    name: job
    version: 1.0.0
    steps:
      - name: run
  YAML

  def test_a_schedule_makes_a_task_per_tick
    @engine.register_template(JOB)
    view = @engine.schedule("every_second", "* * * * * *", "rb_sched", "job",
                            context: { "from" => "cron" }, overlap: "allow")
    assert_equal "every_second", view["name"]
    refute_nil view["next_at"]
    sleep 1.1
    assert_operator @engine.fire_schedules, :>=, 1
    made = @engine.list_tasks(namespace: "rb_sched")
    refute_empty made
    assert(made.all? { |t| t["context"] == { "from" => "cron" } })
    assert_equal ["every_second"], @engine.schedules.map { |s| s["name"] }
    assert @engine.unschedule("every_second")
    refute @engine.unschedule("every_second")
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.schedule("s", "nope", "rb_sched", "job") }
    assert_raises(TaskerCore::InvalidArgumentError) do
      @engine.schedule("s", "* * * * *", "rb_sched", "job", timezone: "Mars/Base")
    end
  end
end

TaskerTest.on_each_store(SchedulesBehaviour)
