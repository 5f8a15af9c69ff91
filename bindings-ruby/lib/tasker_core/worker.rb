# frozen_string_literal: true

require "securerandom"
require "socket"

module TaskerCore
  # Runs registered handlers for the steps an {Engine} hands out.
  #
  # The engine never calls into Ruby. The worker's loop asks it for work ({Engine#claim}, which
  # waits without the GVL), runs each claimed step's handler on one of +concurrency+ Ruby
  # threads, and reports the outcome ({Engine#complete} / {Engine#fail}) from the thread that
  # ran the handler. The loop claims only as many steps as it has idle threads, in batches
  # (when a quarter of them are idle).
  #
  # @example
  #   worker = TaskerCore::Worker.new(engine, concurrency: 4)
  #   worker.handler("charge") do |step|
  #     raise TaskerCore::RetryableError.new("gateway busy", retry_after: 2) if step.attempt == 1
  #     { charged: step.context["order"] }
  #   end
  #   worker.register(ShipHandler)           # a TaskerCore::StepHandler subclass
  #   worker.run_until_idle(timeout: 30)     # => {"completed"=>2, "failed"=>1, "lost"=>0, "idle"=>true}
  #
  # What a handler does, and what the worker reports:
  # - returns a JSON-serialisable value: +complete(result)+;
  # - returns something else (+Object.new+, a +Time+, a String that is not UTF-8): a permanent
  #   failure, "result is not JSON-serialisable: …";
  # - raises {RetryableError}: a retryable failure, with its +retry_after+;
  # - raises {PermanentError}: a permanent failure;
  # - raises anything else: a retryable failure "ErrorClass: message"; the backtrace is logged.
  class Worker
    # How often a report is tried through store errors (about 15 s of backoff in all).
    REPORT_TRIES = 12
    # The signals that stop {#run} cleanly when it runs in the main thread.
    SIGNALS = %w[INT TERM].freeze

    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "lost"
    private_constant :COMPLETED, :FAILED, :LOST

    # @return [Engine] the engine this worker claims from
    attr_reader :engine
    # @return [String] the id recorded as the owner of this worker's leases
    attr_reader :worker_id
    # @return [Integer] how many steps run at once (the number of handler threads)
    attr_reader :concurrency
    # @return [Float] seconds a claim waits for work before the loop looks around again
    attr_reader :poll_interval

    # @param engine [Engine]
    # @param concurrency [Integer] how many steps run at once: the size of the thread pool
    # @param worker_id [String, nil] the owner recorded on the leases this worker takes
    #   (default: +rb-<host>-<pid>-<random>+)
    # @param poll_interval [Numeric] seconds a claim waits for work before the loop looks
    #   around again (stop requests, timeouts, work made ready by other processes)
    # @param executor [#wrap, nil] an object whose +wrap { }+ surrounds every handler call;
    #   under Rails, +Rails.application.executor+ (the default there, see {TaskerCore.executor})
    # @raise [TypeError, ArgumentError] for arguments of the wrong type or range
    def initialize(engine, concurrency: 4, worker_id: nil, poll_interval: 0.1, executor: TaskerCore.executor)
      raise TypeError, "engine must be a TaskerCore::Engine, not #{engine.class}" unless engine.is_a?(Engine)
      raise TypeError, "concurrency must be an Integer, not #{concurrency.class}" unless concurrency.is_a?(Integer)
      raise ArgumentError, "concurrency must be >= 1, not #{concurrency}" if concurrency < 1

      if worker_id.nil?
        worker_id = "rb-#{Socket.gethostname}-#{Process.pid}-#{SecureRandom.hex(3)}"
      elsif !worker_id.is_a?(String)
        raise TypeError, "worker_id must be a String or nil, not #{worker_id.class}"
      elsif worker_id.empty?
        raise ArgumentError, "worker_id must not be empty"
      end
      unless poll_interval.is_a?(Numeric)
        raise TypeError, "poll_interval must be a number of seconds, not #{poll_interval.class}"
      end
      unless poll_interval.to_f.finite? && poll_interval.to_f.positive?
        raise ArgumentError, "poll_interval must be a positive number of seconds, not #{poll_interval.inspect}"
      end
      if !executor.nil? && !executor.respond_to?(:wrap)
        raise TypeError, "executor must respond to wrap (like Rails.application.executor), not #{executor.class}"
      end

      @engine = engine
      @concurrency = concurrency
      @worker_id = worker_id.dup.freeze
      @poll_interval = poll_interval.to_f
      @executor = executor
      @handlers = {}
      @handlers_lock = Mutex.new
      @run_lock = Mutex.new
      @stop_requested = false
      @signals_seen = 0
      @signal_received = nil
      @pool = nil
    end

    # Registers the block as the handler named +name+.
    #
    # @example
    #   worker.handler("validate") { |step| { valid: true, order: step.context["order"] } }
    #
    # @param name [String, Symbol] the template step's +handler:+ (which defaults to its name)
    # @yieldparam step [Step]
    # @yieldreturn [Object] the step's JSON-serialisable result
    # @return [self]
    # @raise [ArgumentError] without a block, for an empty name or a name registered already
    def handler(name, &block)
      raise ArgumentError, "worker.handler(#{name.inspect}) needs a block: handler(name) { |step| ... }" if block.nil?

      register(name, block)
    end

    # Registers a handler: a {StepHandler} subclass under its {StepHandler.handler_name}, or
    # a name with a callable (anything with +call(step)+: a lambda, a method, a
    # {StepHandler} subclass, an object) or a block.
    #
    # @example
    #   worker.register(ChargeHandler)
    #   worker.register("ship", ShipHandler)
    #   worker.register("notify", ->(step) { { notified: true } })
    #   worker.register("reserve_stock") { |step| { reserved: 1 } }
    #
    # @return [self]
    # @raise [TypeError] when the handler is not callable or the name not a String/Symbol
    # @raise [ArgumentError] for an empty name or a name registered already
    def register(name_or_handler, handler = nil, &block)
      if name_or_handler.is_a?(String) || name_or_handler.is_a?(Symbol)
        name = name_or_handler.to_s
        raise ArgumentError, "give the handler as an argument or as a block, not both" if handler && block

        callable = handler || block
        raise ArgumentError, "register(#{name.inspect}) needs a handler: a callable or a block" if callable.nil?
      elsif handler.nil? && block.nil? && name_or_handler.respond_to?(:handler_name)
        callable = name_or_handler
        name = callable.handler_name.to_s
      else
        raise TypeError,
              "register takes a StepHandler subclass, or a handler name (String) with a callable or a block; " \
              "not #{name_or_handler.class}"
      end
      raise ArgumentError, "a handler name must not be empty" if name.empty?

      check_callable(name, callable)
      @handlers_lock.synchronize do
        raise ArgumentError, "a handler named #{name.inspect} is registered already" if @handlers.key?(name)

        @handlers[name.dup.freeze] = callable
      end
      self
    end

    # Registers each handler class (e.g. +TaskerCore::StepHandler.registry+).
    #
    # @param classes [Enumerable<Class>] {StepHandler} subclasses
    # @return [self]
    def register_handlers(classes)
      classes.each { |klass| register(klass) }
      self
    end

    # @return [Array<String>] the names of the registered handlers
    def handlers
      @handlers_lock.synchronize { @handlers.keys }
    end

    # @return [Boolean] whether {#run} or {#run_until_idle} is under way
    def running?
      @run_lock.locked?
    end

    # Works until nothing is ready, running or waiting for a retry, or +timeout+ seconds.
    #
    # "Nothing" is what +engine.work_status(handlers)+ reports (ready steps of other handlers
    # do not count; steps running on other workers and retries not due yet do), with none of
    # this worker's handlers still running. At the timeout, steps already running finish and
    # report before this returns.
    #
    # @param timeout [Numeric, nil] seconds; nil: no limit
    # @return [Hash{String => Integer, Boolean}] +"completed"+, +"failed"+ (attempts failed,
    #   retryable or not), +"lost"+ (outcomes the engine did not record: the claim was lost,
    #   or the report could not be stored) and +"idle"+ (whether the run ended because there
    #   was nothing left to do)
    # @raise [RuntimeError] without handlers, or while the worker runs already
    def run_until_idle(timeout: nil)
      unless timeout.nil?
        unless timeout.is_a?(Numeric)
          raise TypeError, "timeout must be a number of seconds or nil, not #{timeout.class}"
        end
        raise ArgumentError, "timeout must be >= 0 seconds, not #{timeout.inspect}" unless timeout.to_f >= 0
      end
      deadline = timeout.nil? ? nil : monotonic + timeout.to_f
      run_loop(until_idle: true, deadline: deadline)
    end

    # Works until {#stop} is called (from another thread or a handler), or SIGINT / SIGTERM.
    #
    # Either way the worker claims nothing more, lets the running handlers finish and report,
    # logs "stopped" and returns the counts (see {#run_until_idle}). When +run+ is called from
    # the main thread it traps INT and TERM for its duration (a signal that is ignored, as
    # under +nohup+, stays ignored) and puts the previous handlers back when it returns. A
    # second signal while the running handlers finish raises +Interrupt+ (SIGINT) or
    # +SignalException+ (SIGTERM) without waiting for them; a step whose handler never
    # reports is handed out again once its lease expires.
    #
    # @return [Hash{String => Integer, Boolean}] the counts, as {#run_until_idle} returns them
    def run
      run_loop(until_idle: false, deadline: nil)
    end

    # Asks {#run} (or {#run_until_idle}) to stop claiming and return once the running steps
    # have reported. A stop requested before a run starts makes that run return at once; the
    # request is used up by the run it ends. Safe to call from any thread and from a handler.
    #
    # @return [void]
    def stop
      @stop_requested = true
      begin
        @pool&.wake
      rescue ThreadError
        # From a trap handler (no Mutex there): the loop sees the flag within poll_interval.
      end
      nil
    end

    # @!visibility private
    def inspect
      "#<TaskerCore::Worker #{worker_id} concurrency=#{concurrency} handlers=#{handlers.inspect}>"
    end

    private

    def run_loop(until_idle:, deadline:)
      raise "this worker is running already; a worker runs one loop at a time" unless @run_lock.try_lock

      begin
        names = handlers
        raise "the worker has no handlers: register some with worker.handler(name) { |step| ... }" if names.empty?

        previous_traps = until_idle ? {} : install_traps
        begin
          work(until_idle, deadline)
        ensure
          restore_traps(previous_traps)
        end
      ensure
        @run_lock.unlock
      end
    end

    def work(until_idle, deadline)
      counts = { COMPLETED => 0, FAILED => 0, LOST => 0, "idle" => false }
      @signals_seen = 0
      @signal_received = nil
      pool = Pool.new(@concurrency, "tasker_core-#{@worker_id}") { |claimed| execute(claimed) }
      @pool = pool
      logger.info do
        "worker #{@worker_id} started: handlers #{handlers.join(', ')}, concurrency #{@concurrency}"
      end
      stopped = false
      failure = nil
      begin
        stopped = claim_loop(pool, counts, until_idle, deadline)
      rescue Exception => e # rubocop:disable Lint/RescueException -- re-raised once the running steps have reported
        failure = e
        stopped = true if e.is_a?(SignalException)
      end
      abandon = failure.is_a?(SignalException) && @signals_seen > 1
      begin
        if abandon
          warn_abandoned(pool)
        else
          pool.drain { |outcome| tally(counts, outcome) }
        end
      rescue SignalException => e
        # A second signal while the running steps finish: return without their reports.
        warn_abandoned(pool)
        failure = e
      ensure
        @pool = nil
        pool.close
      end
      if stopped
        # This run has honoured the stop request; the next run starts afresh.
        @stop_requested = false
        logger.info { "worker #{@worker_id} stopped" }
      end
      raise failure unless failure.nil?

      logger.info do
        "worker #{@worker_id} finished: #{counts[COMPLETED]} completed, #{counts[FAILED]} failed, " \
          "#{counts[LOST]} lost#{counts['idle'] ? ' (idle)' : ''}"
      end
      counts
    end

    # The loop of one run: claims while there are idle threads, collects the outcomes.
    # Returns true when a stop request ended it.
    def claim_loop(pool, counts, until_idle, deadline)
      store_errors = 0
      loop do
        if @stop_requested
          if @signal_received
            logger.info do
              "received SIG#{@signal_received}: no new claims; waiting for #{pool.in_flight} running step(s) to report"
            end
          end
          return true
        end
        now = monotonic
        return false if deadline && now >= deadline

        wait = @poll_interval
        wait = [wait, deadline - now].min if deadline
        pool.take(0).each { |outcome| tally(counts, outcome) }
        free = @concurrency - pool.in_flight
        # Claim in batches, as the Rust worker does: with steps running, wait until a quarter
        # of the threads are free, so that one claim hands out many steps.
        if free < claim_batch && pool.in_flight.positive?
          pool.take(wait).each { |outcome| tally(counts, outcome) }
          next
        end

        names = handlers
        status = nil
        begin
          # Wait for work only when nothing runs; otherwise look, and come back to collect the
          # outcomes of the running steps (each one may have made more steps ready).
          idle_before = pool.in_flight.zero?
          claimed = @engine.claim(@worker_id, names, free, idle_before ? wait : 0.0)
          status = @engine.work_status(names) if until_idle && claimed.empty? && idle_before
          store_errors = 0
        rescue StoreError => e
          raise if @engine.closed?

          store_errors += 1
          back_off(e, store_errors)
          next
        end
        unless claimed.empty?
          logger.debug { "claimed #{claimed.size} step(s)" }
          claimed.each { |c| pool.submit(c) }
          next
        end
        unless pool.in_flight.zero?
          pool.take(wait).each { |outcome| tally(counts, outcome) }
          next
        end
        if until_idle && !status.nil? && idle?(status)
          counts["idle"] = true
          return false
        end
      end
    end

    def claim_batch
      [@concurrency / 4, 1].max
    end

    def idle?(status)
      %w[ready running waiting].none? do |key|
        value = status[key]
        value.is_a?(Integer) ? value.positive? : value
      end
    end

    def tally(counts, outcome)
      counts[outcome] += 1
    end

    # Waits after the +n+th store error in a row (or until a stop request).
    def back_off(error, n)
      delay = [0.1 * (2**[n, 5].min), 3.0].min
      logger.warn do
        format("store unavailable (%s); the worker retries in %.1f s (attempt %d)", error.message, delay, n)
      end
      until_time = monotonic + delay
      sleep([0.05, until_time - monotonic].min) while !@stop_requested && monotonic < until_time
    end

    def warn_abandoned(pool)
      logger.warn do
        "interrupted again: returning without the reports of #{pool.in_flight} running step(s) " \
          "(a step whose handler never reports is handed out again once its lease expires)"
      end
    end

    # -- one step (on a pool thread) ------------------------------------------------------

    def execute(claimed)
      step = Step.from_claim(claimed, @engine)
      where = "step #{step.name.inspect} (#{step.step_id}) attempt #{step.attempt}/#{step.max_attempts}"
      fn = @handlers_lock.synchronize { @handlers[step.handler] }
      begin
        raise RetryableError, "no handler named #{step.handler.inspect} is registered" if fn.nil?

        result = @executor.nil? ? fn.call(step) : @executor.wrap { fn.call(step) }
      rescue RetryableError => e
        logger.info { "#{where} failed, retryable: #{e.message}" }
        return fail_step(step, e.message, true, e.retry_after)
      rescue PermanentError => e
        logger.warn { "#{where} failed permanently: #{e.message}" }
        return fail_step(step, e.message, false, nil)
      rescue Exception => e # rubocop:disable Lint/RescueException -- any other error is a retryable failure
        logger.error { "#{where} raised #{e.class}: #{e.message}\n#{(e.backtrace || []).join("\n")}" }
        return fail_step(step, "#{e.class}: #{e.message}", true, nil)
      end
      complete_step(step, result, where)
    end

    def complete_step(step, result, where)
      begin
        report { @engine.complete(step.step_id, step.attempt, result) }
      rescue ClaimLostError => e
        logger.warn { "#{where} completed too late, its result was refused: #{e.message}" }
        return LOST
      rescue InvalidArgumentError, TypeError, RangeError, EncodingError => e
        detail = e.message.sub(/\A(invalid argument: |the result is not JSON-serialisable: )/, "")
        logger.error { "#{where} returned a result that is not JSON-serialisable: #{detail}" }
        return fail_step(step, "result is not JSON-serialisable: #{detail}", false, nil)
      rescue TaskerCore::Error => e
        logger.error { "#{where} completed but the result could not be recorded: #{e.class}: #{e.message}" }
        return LOST
      end
      logger.debug { "#{where} completed" }
      COMPLETED
    end

    def fail_step(step, message, retryable, retry_after)
      report { @engine.fail(step.step_id, step.attempt, utf8(message), retryable, retry_after) }
      FAILED
    rescue ClaimLostError => e
      logger.warn { "step #{step.name.inspect} failed too late, the report was refused: #{e.message}" }
      LOST
    rescue TaskerCore::Error => e
      logger.error do
        "step #{step.name.inspect} failed but the failure could not be recorded: #{e.class}: #{e.message}"
      end
      LOST
    end

    # Calls the block, again with backoff while the store is unavailable (a database restart,
    # a dropped connection) and the engine is open: an outcome is not given up for a blip.
    def report
      delay = 0.05
      attempt = 0
      begin
        attempt += 1
        yield
      rescue StoreError => e
        raise if attempt >= REPORT_TRIES || @engine.closed?

        logger.warn { format("could not report a step (%s); retrying in %.2f s", e.message, delay) }
        sleep(delay)
        delay = [delay * 2, 2.0].min
        retry
      end
    end

    def utf8(text)
      text = text.to_s
      if text.encoding == Encoding::UTF_8
        text.valid_encoding? ? text : text.scrub("?")
      elsif text.encoding == Encoding::BINARY
        text.dup.force_encoding(Encoding::UTF_8).scrub("?")
      else
        text.encode(Encoding::UTF_8, invalid: :replace, undef: :replace, replace: "?")
      end
    end

    def check_callable(name, callable)
      unless callable.respond_to?(:call)
        raise TypeError, "the handler #{name.inspect} must respond to call(step), not be a #{callable.class}"
      end
      return if callable.is_a?(Proc) && !callable.lambda? # a block takes what it is given

      arity = callable_arity(callable)
      return if arity.nil? || arity == 1 || (arity.negative? && arity >= -2)

      raise ArgumentError, "the handler #{name.inspect} must take one argument (the step), its call takes #{arity}"
    end

    def callable_arity(callable)
      return callable.arity if callable.is_a?(Proc) || callable.is_a?(Method)

      callable.method(:call).arity
    rescue NameError
      nil # call answered through method_missing: nothing to check
    end

    # -- signals --------------------------------------------------------------------------

    def install_traps
      return {} unless Thread.current == Thread.main

      previous = {}
      SIGNALS.each do |sig|
        old = Signal.trap(sig) { on_signal(sig) }
        if old.nil? || old == "IGNORE"
          Signal.trap(sig, old) # ignored (nohup, `cmd &`): stays ignored
        else
          previous[sig] = old
        end
      rescue ArgumentError
        next # a signal this platform does not have
      end
      previous
    end

    def restore_traps(previous)
      previous.each { |sig, old| Signal.trap(sig, old) }
    end

    # Runs in trap context: no Mutex, no Logger here.
    def on_signal(sig)
      @signals_seen += 1
      if @signals_seen == 1
        @signal_received = sig
        @stop_requested = true
      elsif sig == "INT"
        raise Interrupt
      else
        raise SignalException, sig
      end
    end

    def logger
      TaskerCore.logger
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # A fixed set of threads taking claimed steps from a Queue; each outcome is handed back
    # to the worker's loop, which waits for outcomes with a timeout.
    class Pool
      # @return [Integer] steps submitted whose outcome is not in yet
      attr_reader :in_flight

      def initialize(size, name, &work)
        @work = work
        @jobs = Queue.new
        @mutex = Mutex.new
        @ready = ConditionVariable.new
        @outcomes = []
        @in_flight = 0
        @threads = Array.new(size) do |i|
          Thread.new do
            Thread.current.name = "#{name}-#{i}"
            Thread.current.report_on_exception = true
            serve
          end
        end
      end

      def submit(job)
        @mutex.synchronize { @in_flight += 1 }
        @jobs << job
      end

      # The outcomes that have come in, waiting up to +timeout+ seconds for one.
      def take(timeout)
        @mutex.synchronize do
          @ready.wait(@mutex, timeout) if @outcomes.empty? && timeout.positive? && @in_flight.positive?
          taken = @outcomes
          @outcomes = []
          taken
        end
      end

      # Wakes a #take that waits (a stop request).
      def wake
        @mutex.synchronize { @ready.broadcast }
      end

      # Yields every outcome until nothing is in flight.
      def drain
        loop do
          taken = @mutex.synchronize do
            @ready.wait(@mutex, 0.1) if @outcomes.empty? && @in_flight.positive?
            t = @outcomes
            @outcomes = []
            t
          end
          taken.each { |outcome| yield outcome }
          break if taken.empty? && @mutex.synchronize { @in_flight.zero? && @outcomes.empty? }
        end
      end

      # Lets the threads end once the queue is empty; joins those that have nothing left.
      def close
        @jobs.close
        @threads.each { |t| t.join(5) } if @mutex.synchronize { @in_flight.zero? }
      end

      private

      def serve
        while (job = @jobs.pop)
          outcome = begin
            @work.call(job)
          rescue Exception => e # rubocop:disable Lint/RescueException -- a bug in the reporting code
            TaskerCore.logger.error do
              "a step's run ended in an unexpected error: #{e.class}: #{e.message}\n#{(e.backtrace || []).join("\n")}"
            end
            FAILED
          end
          @mutex.synchronize do
            @outcomes << outcome
            @in_flight -= 1
            @ready.broadcast
          end
        end
      end
    end
    private_constant :Pool
  end
end
