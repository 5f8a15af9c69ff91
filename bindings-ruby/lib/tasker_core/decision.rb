# frozen_string_literal: true

module TaskerCore
  # What the handler of a +type: decision+ step returns: of the steps that depend on it, the
  # ones named in +steps+ run; the others are skipped with the reason "not chosen", and so are
  # the steps that require one of them. A +deferred_convergence+ step after them runs once the
  # chosen ones have finished, with their results as its inputs.
  #
  # Naming a step that does not depend on the decision step fails the step for good; so does a
  # plain result from a decision step.
  #
  # @example A routing decision
  #   worker.handler("routing_decision") do |step|
  #     amount = step.context["amount"]
  #     route = amount < 1_000 ? %w[auto_approve] : %w[manager_approval]
  #     TaskerCore::Decision.new(steps: route, result: { "amount" => amount })
  #   end
  class Decision
    # @return [Array<String>] the names of the dependents that run
    attr_reader :steps
    # @return [Object] the decision step's own result (any JSON value), handed to its children
    attr_reader :result

    # @param steps [Array<String, Symbol>] the dependents that run (none is a valid choice)
    # @param result [Object] the step's own result (default nil)
    # @raise [TypeError] when +steps+ is not an Array of names
    def initialize(steps:, result: nil)
      raise TypeError, "steps must be an Array of step names, not #{steps.class}" unless steps.is_a?(Array)

      @steps = steps.map do |s|
        raise TypeError, "a step name must be a String or Symbol, not #{s.class}" unless s.is_a?(String) || s.is_a?(Symbol)

        s.to_s
      end.freeze
      @result = result
      freeze
    end

    # @return [String]
    def inspect = "#<TaskerCore::Decision steps=#{@steps.inspect} result=#{@result.inspect}>"

    # @return [Boolean] same steps and result
    def ==(other) = other.is_a?(Decision) && other.steps == steps && other.result == result
  end
end
