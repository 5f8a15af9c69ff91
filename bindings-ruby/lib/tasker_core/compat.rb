# frozen_string_literal: true

require "tasker_core"

# What handler code written for the Rails Tasker engine references, so that such a handler runs
# on Tasker Core with no change to its body: +Tasker::StepHandler::Base+, +Tasker::RetryableError+
# and +Tasker::PermanentError+, and the task, sequence and step objects its +process+ reads.
# +require "tasker_core/compat"+ (the Railtie does it unless the Tasker gem itself is loaded).
#
# @example a Rails Tasker handler, unchanged
#   class ProcessPaymentHandler < Tasker::StepHandler::Base
#     def process(task, sequence, step)
#       cart = sequence.steps.find { |s| s.name == "validate_cart" }.results
#       raise Tasker::RetryableError.new("rate limited", retry_after: 30) if Gateway.limited?
#       raise Tasker::PermanentError.new("declined", error_code: "PAYMENT_DECLINED") if declined?
#       { charged: cart["total"], method: task.context["payment_info"]["method"] }
#     end
#   end
#
#   worker.autoload_handlers(engine.register_template(File.read("order_processing.yaml")))
module Tasker
  # A failure to try again: +retry_after+ (seconds) replaces the step's backoff.
  class RetryableError < ::TaskerCore::RetryableError
    # @return [Hash] what the handler said about the failure
    attr_reader :context

    # @param message [String]
    # @param retry_after [Numeric, nil] seconds before the next attempt
    # @param context [Hash] anything more the handler wants recorded
    def initialize(message = "retryable failure", retry_after: nil, context: {}, **)
      super(message, retry_after: retry_after)
      @context = context
    end
  end

  # A failure for good: the step is not tried again.
  class PermanentError < ::TaskerCore::PermanentError
    # @return [String, nil] the handler's code for the failure
    attr_reader :error_code
    # @return [Hash] what the handler said about the failure
    attr_reader :context

    # @param message [String]
    # @param error_code [String, nil]
    # @param context [Hash]
    def initialize(message = "permanent failure", error_code: nil, context: {}, **)
      super(error_code.nil? ? message : "#{message} (#{error_code})")
      @error_code = error_code
      @context = context
    end
  end

  module StepHandler
    # The base class of Rails Tasker step handlers: a subclass implements
    # +process(task, sequence, step)+ and may override +process_results+. The worker makes one
    # instance per step, with the step's +config+ (the template's +handler_config+).
    class Base
      # @param config [Hash] the step's config from its template
      def initialize(config: {})
        @config = config
      end

      # Does the step's work; its return value becomes the step's result (see {#process_results}).
      # @param task [TaskerCore::Compat::Task]
      # @param sequence [TaskerCore::Compat::Sequence]
      # @param step [TaskerCore::Compat::Step]
      def process(task, sequence, step)
        raise NotImplementedError, "#{self.class.name} must implement process(task, sequence, step)"
      end

      # Sets the step's results from what {#process} returned, unless {#process} set
      # +step.results+ itself. Override to shape the results.
      # @return [void]
      def process_results(step, process_output, initial_results)
        step.results = process_output if step.results.equal?(initial_results)
      end

      # Publishes a custom event the step's template declares (+custom_events+), from the step
      # this handler runs: Rails Tasker's +publish_custom_event+. Subscribers see it under its
      # own name (in Rails, +ActiveSupport::Notifications+ as <tt>"<name>.tasker_core"</tt>).
      # @param event_name [String] the event's name as declared
      # @param payload [Hash] the event's payload
      # @return [nil]
      # @raise [TaskerCore::InvalidArgumentError] when the event is not declared for the step
      def publish_custom_event(event_name, payload = {})
        step = @tasker_core_step
        raise ArgumentError, "publish_custom_event is called while the worker runs process" if step.nil?

        step.publish(event_name, payload)
      end

      protected

      # @return [Hash] the step's config
      attr_reader :config
    end
  end
end
