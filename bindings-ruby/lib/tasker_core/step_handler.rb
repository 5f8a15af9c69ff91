# frozen_string_literal: true

module TaskerCore
  # Base class for handlers written as classes, one class per handler.
  #
  # A subclass implements {#call}; the worker makes a new instance for every step it runs, so
  # instance variables never leak between steps or threads. The handler's name (the template
  # step's +handler:+) is the class name, underscored, without the "Handler" suffix and without
  # its modules, unless {.handler_name} sets another.
  #
  # @example
  #   class ChargeHandler < TaskerCore::StepHandler      # handler "charge"
  #     def call(step)
  #       raise TaskerCore::RetryableError.new("gateway busy", retry_after: 2) if step.attempt == 1
  #       { charged: true }
  #     end
  #   end
  #
  #   class Shipping < TaskerCore::StepHandler
  #     handler_name "ship"
  #     def call(step) = { tracking: "TRK-#{step.context['order']}" }
  #   end
  #
  #   worker.register(ChargeHandler)                              # or, every subclass at once:
  #   worker.register_handlers(TaskerCore::StepHandler.registry)
  class StepHandler
    @registry = []
    @registry_lock = Mutex.new

    class << self
      # Sets the handler's name (with an argument) or returns it.
      #
      # @param name [String, Symbol, nil] the name to set; nil to read it
      # @return [String] the handler's name
      # @raise [ArgumentError] for an empty name, or an anonymous class without a name set
      def handler_name(name = nil)
        unless name.nil?
          unless name.is_a?(String) || name.is_a?(Symbol)
            raise TypeError, "a handler name must be a String or Symbol, not #{name.class}"
          end
          raise ArgumentError, "a handler name must not be empty" if name.to_s.empty?

          @handler_name = name.to_s.dup.freeze
        end
        @handler_name || default_handler_name
      end

      # The handler classes defined so far: every subclass (direct or not) that implements
      # {#call}. Abstract intermediate classes (an +ApplicationHandler+ without +call+) are
      # left out; a class reloaded under the same name replaces its stale copy.
      #
      # @return [Array<Class>] in order of definition
      def registry
        lock = StepHandler.instance_variable_get(:@registry_lock)
        classes = lock.synchronize { StepHandler.instance_variable_get(:@registry).dup }
        classes.select(&:concrete?)
      end

      # Runs the handler for one step: +new.call(step)+. This makes a handler class a callable
      # that {Worker#register} accepts as it is.
      #
      # @param step [Step]
      # @return [Object] the step's result
      def call(step)
        new.call(step)
      end

      # @!visibility private
      # Whether the class implements #call itself or through a parent below StepHandler.
      def concrete?
        self != StepHandler && instance_method(:call).owner != StepHandler
      end

      # @!visibility private
      def inherited(subclass)
        super
        lock = StepHandler.instance_variable_get(:@registry_lock)
        lock.synchronize do
          list = StepHandler.instance_variable_get(:@registry)
          # Code reloading (Rails' development mode) defines a new class under the same name.
          list.reject! { |known| !known.name.nil? && known.name == subclass.name } unless subclass.name.nil?
          list << subclass
        end
      end

      private

      def default_handler_name
        if name.nil?
          raise ArgumentError,
                "an anonymous StepHandler subclass has no name: set one with handler_name \"name\""
        end

        base = name.split("::").last
        base = base.delete_suffix("Handler") unless base == "Handler"
        base.gsub(/([A-Z\d]+)([A-Z][a-z])/, '\1_\2')
            .gsub(/([a-z\d])([A-Z])/, '\1_\2')
            .tr("-", "_")
            .downcase
            .freeze
      end
    end

    # Runs the handler for one step.
    #
    # @param step [Step] the claimed step
    # @return [Object] the step's result: anything JSON-serialisable (Hash, Array, String,
    #   Integer, Float, true, false, nil; Symbol keys and values become Strings)
    # @raise [RetryableError] to have the step retried (optionally after +retry_after+ seconds)
    # @raise [PermanentError] to fail the step for good
    def call(step)
      raise NotImplementedError, "#{self.class.name || self.class.inspect}#call(step) is not implemented"
    end
  end
end
