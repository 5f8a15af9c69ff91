# frozen_string_literal: true

module TaskerCore
  # What the handler of a +type: batchable+ step returns: the work its +batch.worker+ step does,
  # one instance per slice of +batch.size+ — a list of +items+ (each slice takes its share,
  # {Step#batch}+["items"]+) or a +total+ (each slice a range +start+ … +end+ of it) — and the
  # step's own +result+. At most +batch.parallelism+ slices run at once; the step after the
  # worker step gets the list of the slices' results in slice order.
  #
  # @example Slices of rows
  #   worker.handler("load_rows") { |step| TaskerCore::Batch.new(items: fetch_rows(step.context)) }
  #   worker.handler("process_rows") { |step| step.batch["items"].sum }
  class Batch
    # @return [Array, nil] the items, for a batch of items
    attr_reader :items
    # @return [Integer, nil] the total, for a batch by total
    attr_reader :total
    # @return [Object] the batchable step's own result (any JSON value)
    attr_reader :result

    # @param items [Array, nil] the items the slices share out
    # @param total [Integer, nil] or the total they share out as ranges
    # @param result [Object] the batchable step's own result
    # @raise [ArgumentError] unless exactly one of +items+ and +total+ is given
    # @raise [TypeError] when +items+ is not an Array or +total+ not a non-negative Integer
    def initialize(items: nil, total: nil, result: nil)
      raise ArgumentError, "a Batch takes items: or total: (one of them)" if items.nil? == total.nil?
      raise TypeError, "items must be an Array, not #{items.class}" unless items.nil? || items.is_a?(Array)
      unless total.nil? || (total.is_a?(Integer) && !total.negative?)
        raise TypeError, "total must be a non-negative Integer, not #{total.inspect}"
      end

      @items = items.freeze
      @total = total
      @result = result
      freeze
    end

    # @return [String]
    def inspect
      @items ? "#<TaskerCore::Batch #{@items.size} items>" : "#<TaskerCore::Batch total=#{@total}>"
    end
  end
end
