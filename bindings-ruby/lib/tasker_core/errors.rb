# frozen_string_literal: true

module TaskerCore
  # Raised when the database fails, or when the engine is closed ("the engine is closed").
  #
  # @example
  #   begin
  #     engine.create_task("shop", "order", context: ctx)
  #   rescue TaskerCore::StoreError => e
  #     retry if e.kind == "unavailable" && (tries += 1) < 3
  #     raise
  #   end
  class StoreError
    # How the store failed: +"unavailable"+ (the database cannot be reached or the connection
    # was lost; a retry may succeed), +"timeout"+ (a statement, a lock wait or the wait for a
    # connection ran out of time), +"conflict"+ (a concurrent writer took a unique key; a
    # serialization failure or a deadlock), +"corrupt"+ (stored rows cannot be read),
    # +"other"+, or +"closed"+ (the engine was closed).
    # @return [String]
    def kind
      @kind || "other"
    end
  end

  # Raised by a handler: this attempt failed, try the step again.
  #
  # The step is retried while it has attempts left (+retry.max_attempts+ of its template).
  # +retry_after+ (seconds) replaces the step's backoff for the next attempt; +nil+ keeps the
  # backoff. Any exception other than {PermanentError} is retryable too; raise this one to give a
  # clear message or a +retry_after+.
  #
  # @example
  #   worker.handler("charge") do |step|
  #     raise TaskerCore::RetryableError.new("gateway busy", retry_after: 2) if gateway.busy?
  #     { charged: true }
  #   end
  #
  # This is a handler's signal to the {Worker}, not an error of the engine: it is a
  # +StandardError+, not a {TaskerCore::Error}.
  class RetryableError < StandardError
    # @return [Float, nil] seconds to wait before the next attempt, or nil for the step's backoff
    attr_reader :retry_after

    # @param message [String] why the attempt failed (recorded as the step's error)
    # @param retry_after [Numeric, nil] seconds before the next attempt (an
    #   +ActiveSupport::Duration+ such as +2.seconds+ works too); nil keeps the backoff
    # @raise [TypeError] when retry_after is not a number
    # @raise [ArgumentError] when retry_after is negative, infinite or NaN
    def initialize(message = "retryable failure", retry_after: nil)
      super(message)
      @retry_after = RetryableError.seconds(retry_after)
    end

    # @!visibility private
    def inspect
      return "#<#{self.class.name}: #{message}>" if retry_after.nil?

      "#<#{self.class.name}: #{message} (retry_after: #{retry_after})>"
    end

    # @!visibility private
    # +value+ as a finite, non-negative Float of seconds (or nil).
    def self.seconds(value)
      return nil if value.nil?
      unless value.is_a?(Numeric) && value.respond_to?(:to_f)
        raise TypeError, "retry_after must be a number of seconds or nil, not #{value.class}"
      end

      seconds = value.to_f
      unless seconds.finite? && seconds >= 0.0
        raise ArgumentError, "retry_after must be a finite number of seconds >= 0, not #{value.inspect}"
      end

      seconds
    end
  end

  # Raised by a handler: this step failed for good, do not try it again.
  #
  # The step ends in +error+; the steps that require it to succeed are +skipped+, and the task
  # ends in +error+ once nothing else can run (an operator may still +retry_task+ or
  # +resolve_step+).
  #
  # @example
  #   raise TaskerCore::PermanentError, "card declined"
  #
  # Like {RetryableError}, a handler's signal: a +StandardError+, not a {TaskerCore::Error}.
  class PermanentError < StandardError
    def initialize(message = "permanent failure")
      super
    end
  end
end
