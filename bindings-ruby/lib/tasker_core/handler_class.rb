# frozen_string_literal: true

module TaskerCore
  # Handler classes named in templates (+handler_class+ of a Rails Tasker template,
  # +handler.callable+ of a tasker-core one): {Worker#autoload_handlers} finds each by its name
  # and runs it through {HandlerClass.adapter}, which knows two contracts — Rails Tasker's
  # +process(task, sequence, step)+ (with +process_results+) and this engine's +call(step)+ —
  # and builds each instance with +new(config: step.config)+ when its +initialize+ takes
  # +config:+, else +new+.
  module HandlerClass
    # The objects a Rails Tasker handler's +process+ reads.
    module Compat
      # The task: +task_id+, +context+, +namespace+, +name+.
      Task = Struct.new(:task_id, :context, :namespace, :name, keyword_init: true)

      # One step of the task as the sequence shows it: +name+, +results+, +status+,
      # +workflow_step_id+.
      SequenceStep = Struct.new(:name, :results, :status, :workflow_step_id, keyword_init: true)

      # The task's steps, each with its name and results, read when first asked for.
      class Sequence
        # @param step [TaskerCore::Step] the step being run
        # @param engine [TaskerCore::Engine, nil] the engine that holds the task
        def initialize(step, engine)
          @step = step
          @engine = engine
        end

        # @return [Array<SequenceStep>] every step of the task, in template order
        def steps
          @steps ||= read
        end

        # @return [SequenceStep, nil] the step called +name+
        def find_step_by_name(name)
          steps.find { |s| s.name == name.to_s }
        end

        private

        def read
          if @engine
            @engine.task(@step.task_id)["steps"].map do |s|
              SequenceStep.new(name: s["name"], results: s["result"], status: s["status"],
                               workflow_step_id: s["step_id"])
            end
          else
            # Without the engine, the parents' results this step was handed.
            @step.inputs.map { |name, result| SequenceStep.new(name: name, results: result, status: "complete") }
          end
        end
      end

      # The step being run: +name+, +workflow_step_id+, +attempts+, +results+ (nil until set).
      class Step
        attr_reader :name, :workflow_step_id, :attempts
        attr_accessor :results

        # @param step [TaskerCore::Step]
        def initialize(step)
          @name = step.name
          @workflow_step_id = step.step_id
          @attempts = step.attempt
          @results = nil
        end
      end
    end

    class << self
      # Whether +klass+ is a handler class: a Class with +process+ or +call+ instance methods.
      def handler_class?(klass)
        klass.is_a?(Class) && (klass.method_defined?(:process) || klass.method_defined?(:call))
      end

      # A callable that runs one step with a new instance of +klass+.
      #
      # @param klass [Class] a class with +process(task, sequence, step)+ or +call(step)+
      # @param engine [TaskerCore::Engine, nil] for the sequence of a +process+ handler
      # @return [Proc]
      def adapter(klass, engine)
        raise TypeError, "#{klass.inspect} has neither process(task, sequence, step) nor call(step)" unless handler_class?(klass)

        if klass.method_defined?(:process)
          ->(step) { process(klass, step, engine) }
        else
          ->(step) { instance(klass, step).call(step) }
        end
      end

      # The class a handler name names, or nil when no constant has that name.
      # @param name [String] e.g. +"Payments::RefundHandler"+
      # @return [Class, nil]
      def find(name)
        return nil unless name.match?(/\A(::)?[A-Z]\w*(::[A-Z]\w*)*\z/)

        klass = Object.const_get(name.delete_prefix("::"))
        klass if handler_class?(klass)
      rescue NameError
        nil
      end

      private

      def instance(klass, step)
        takes_config = klass.instance_method(:initialize).parameters.any? do |type, param|
          param == :config && %i[key keyreq].include?(type)
        end
        takes_config ? klass.new(config: step.config) : klass.new
      end

      def process(klass, step, engine)
        handler = instance(klass, step)
        # What publish_custom_event publishes from (one instance per step).
        handler.instance_variable_set(:@tasker_core_step, step)
        task = Compat::Task.new(task_id: step.task_id, context: step.context, namespace: step.namespace,
                                name: step.task_name)
        current = Compat::Step.new(step)
        initial = current.results
        output = handler.process(task, Compat::Sequence.new(step, engine), current)
        if handler.respond_to?(:process_results)
          handler.process_results(current, output, initial)
        elsif current.results.equal?(initial)
          current.results = output
        end
        current.results
      end
    end
  end
end
