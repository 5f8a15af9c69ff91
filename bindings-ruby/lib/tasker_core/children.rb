# frozen_string_literal: true

module TaskerCore
  # A task a handler starts as a child of its step (see {Children}): a task of
  # +namespace/name+ (its newest version unless +version+ is given) with +context+. Children
  # have their parent's priority.
  class ChildTask
    # @return [String] the template's namespace
    attr_reader :namespace
    # @return [String] the template's name
    attr_reader :name
    # @return [Hash] the child's context
    attr_reader :context
    # @return [String, nil] the template version (nil: the newest)
    attr_reader :version

    # @param namespace [String, Symbol]
    # @param name [String, Symbol]
    # @param context [Hash]
    # @param version [String, nil]
    def initialize(namespace, name, context = {}, version: nil)
      @namespace = namespace.to_s
      @name = name.to_s
      @context = context
      @version = version&.to_s
      freeze
    end

    # @return [String]
    def inspect
      "#<TaskerCore::ChildTask #{@namespace}/#{@name}>"
    end
  end

  # What a handler returns to start child tasks, of any template: the step is
  # +waiting_for_children+ until every child has finished, then completes with the list of
  # their results in order (each a Hash of the child's leaf steps' results by name), or fails
  # for good as soon as one child fails or is cancelled (the others are cancelled). Cancelling
  # the parent task cancels its children. A child's view has +"parent" => {"task_id", "step"}+;
  # the step's view lists its +"children"+. At most 1,000 children per step.
  #
  # @example One invoice task per customer
  #   worker.handler("invoice_all") do |step|
  #     TaskerCore::Children.new(step.context["customers"].map { |c|
  #       TaskerCore::ChildTask.new("billing", "invoice", { "customer" => c })
  #     })
  #   end
  class Children
    # @return [Array<ChildTask>] the child tasks, in order
    attr_reader :tasks

    # @param tasks [Array<ChildTask>]
    # @raise [TypeError] when an element is not a {ChildTask}
    def initialize(tasks)
      tasks = tasks.to_a
      tasks.each_with_index do |t, i|
        raise TypeError, "child #{i} must be a TaskerCore::ChildTask, not #{t.class}" unless t.is_a?(ChildTask)
      end
      @tasks = tasks.freeze
      freeze
    end

    # @return [String]
    def inspect
      "#<TaskerCore::Children #{@tasks.size} tasks>"
    end
  end
end
