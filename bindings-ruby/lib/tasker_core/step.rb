# frozen_string_literal: true

module TaskerCore
  # One claimed attempt of a step, as a handler receives it.
  #
  # +context+ is the task's context and +inputs+ maps each parent step's name to its result
  # (+nil+ for a parent that did not succeed behind a +requires_success: false+ edge); both
  # are plain JSON values with String keys. +attempt+ counts from 1.
  #
  # A step is read-only: return the step's result from the handler, or raise
  # {RetryableError} / {PermanentError}.
  #
  # @example
  #   worker.handler("ship") do |step|
  #     raise TaskerCore::PermanentError, "unpaid" unless step.inputs.dig("charge", "charged")
  #     { tracking: "TRK-#{step.context['order']}" }
  #   end
  class Step
    # @return [String] the task's id
    attr_reader :task_id
    # @return [String] this step's id
    attr_reader :step_id
    # @return [String] the step's name in its template
    attr_reader :name
    # @return [String] the handler the template names for the step
    attr_reader :handler
    # @return [Object] the task's context (a Hash with String keys, or any JSON value)
    attr_reader :context
    # @return [Hash{String => Object}] each parent step's name and its result
    attr_reader :inputs
    # @return [Integer] this attempt's number, from 1
    attr_reader :attempt
    # @return [Integer] how many attempts the step may have in all
    attr_reader :max_attempts
    # @return [String] the namespace of the task's template
    attr_reader :namespace
    # @return [String] the name of the task's template
    attr_reader :task_name
    # @return [String, nil] when this attempt's lease runs out (RFC 3339), unless heartbeated
    attr_reader :lease_expires_at
    # @return [Integer, nil] the step's +timeout_ms+: the longest this attempt may run
    attr_reader :timeout_ms
    # @return [Integer, nil] the step's +lease_ms+: the worker renews the lease by itself
    attr_reader :lease_ms
    # @return [Hash] the step's +config+ from its template (Rails Tasker's +handler_config+,
    #   tasker-core's +handler.initialization+), after the engine's environment overrides;
    #   +{}+ when none
    attr_reader :config
    # @return [Hash, nil] for an instance of a +batch_worker+ step, its slice: +"index"+,
    #   +"start"+, +"end"+ and, for a batch of items, +"items"+; nil for any other step
    attr_reader :batch
    # @return [String, nil] this attempt's W3C trace context: spans a handler starts under it
    #   are children of the attempt's span (see docs/signals.md); nil for a task stored
    #   without a trace
    attr_reader :traceparent

    # The step of one Hash returned by {Engine#claim}.
    #
    # @param claimed [Hash{String => Object}] one element of +engine.claim(...)+
    # @param engine [Engine, WorkerSession, nil] what handed it out (for {#heartbeat})
    # @return [Step]
    def self.from_claim(claimed, engine = nil)
      allocate.send(:load, claimed, engine)
    end

    # @param engine [Engine, nil] the engine that handed the step out (for {#heartbeat})
    def initialize(task_id:, step_id:, name:, handler: name, context: nil, inputs: {}, attempt: 1,
                   max_attempts: 1, namespace: "", task_name: "", lease_expires_at: nil,
                   timeout_ms: nil, lease_ms: nil, config: {}, batch: nil, traceparent: nil,
                   engine: nil)
      @task_id = task_id
      @step_id = step_id
      @name = name
      @handler = handler
      @context = context
      @inputs = inputs
      @attempt = attempt
      @max_attempts = max_attempts
      @namespace = namespace
      @task_name = task_name
      @lease_expires_at = lease_expires_at
      @timeout_ms = timeout_ms
      @lease_ms = lease_ms
      @config = config
      @batch = batch
      @traceparent = traceparent
      @engine = engine
      freeze
    end

    # @!visibility private
    # Fills a step from a claimed Hash (one hash lookup per field: a step per attempt).
    private def load(claimed, engine)
      @task_id = claimed.fetch("task_id")
      @step_id = claimed.fetch("step_id")
      @name = claimed.fetch("name")
      @handler = claimed["handler"] || @name
      @context = claimed["context"]
      @inputs = claimed["inputs"] || {}
      @attempt = claimed.fetch("attempt", 1)
      @max_attempts = claimed.fetch("max_attempts", 1)
      @namespace = claimed.fetch("namespace", "")
      @task_name = claimed.fetch("task_name", "")
      @lease_expires_at = claimed["lease_expires_at"]
      @timeout_ms = claimed["timeout_ms"]
      @lease_ms = claimed["lease_ms"]
      @config = claimed["config"] || {}
      @batch = claimed["batch"]
      @traceparent = claimed["traceparent"]
      @engine = engine
      freeze
    end

    # Whether a retryable failure of this attempt ends the step (no attempts left).
    # @return [Boolean]
    def last_attempt?
      attempt >= max_attempts
    end

    # Renews this attempt's lease now. Optional: the worker renews leases by itself while a
    # handler runs; a heartbeat records progress.
    #
    # @return [String] the new lease expiry (RFC 3339)
    # @raise [ClaimLostError] when the lease was lost already (expired, task cancelled, …)
    def heartbeat
      raise ArgumentError, "this step was not claimed through an engine" if @engine.nil?

      @engine.heartbeat(step_id, attempt)
    end

    # Publishes the custom event +name+ with +payload+ (JSON-compatible) to the engine's
    # subscribers (and, in a Rails app, to +ActiveSupport::Notifications+ as
    # <tt>"<name>.tasker_core"</tt>): subscribers see it under its own name with this step's
    # task, step and attempt, the payload as its +detail+. The template must declare the event
    # (+events+; Rails Tasker's +custom_events+; tasker-core's +domain_events+ /
    # +publishes_events+).
    #
    # @param name [String] the event's name as declared
    # @param payload [Object] any JSON-compatible value
    # @return [nil]
    # @raise [InvalidArgumentError] when the event is not declared for this step or the payload
    #   breaks the event's schema (nothing is published)
    # @raise [ClaimLostError] when the attempt is no longer held
    def publish(name, payload = nil)
      unless @engine.respond_to?(:publish)
        raise ArgumentError, "this step was not handed out by a Worker"
      end

      @engine.publish(step_id, attempt, name.to_s, payload)
      nil
    end

    # Keeps +message+ in this attempt's log at +level+, written with the attempt's outcome and
    # read with {Engine#logs}. An attempt keeps its latest 100 lines of at most 1 KiB each.
    #
    # @param message [String] the line
    # @param level [String, Symbol] +debug+, +info+, +warn+ or +error+ (Logger's +fatal+ too)
    # @return [Boolean] whether it was kept (not once the attempt was handed back)
    # @raise [InvalidArgumentError] for an unknown level
    def log(message, level = :info)
      unless @engine.respond_to?(:log)
        raise ArgumentError, "this step was not handed out by a Worker"
      end

      @engine.log(step_id, attempt, message.to_s, level.to_s)
    end

    # @return [Hash{Symbol => Object}] the step's fields
    def to_h
      {
        task_id: task_id, step_id: step_id, name: name, handler: handler, context: context,
        inputs: inputs, attempt: attempt, max_attempts: max_attempts, namespace: namespace,
        task_name: task_name, lease_expires_at: lease_expires_at, timeout_ms: timeout_ms
      }
    end

    # @!visibility private
    def inspect
      "#<TaskerCore::Step #{namespace}/#{task_name} #{name} (#{step_id}) " \
        "attempt #{attempt}/#{max_attempts}>"
    end
    alias to_s inspect
  end
end
