# frozen_string_literal: true

require "securerandom"
require "socket"

module TaskerCore
  # Runs registered handlers for the steps an {Engine} hands out.
  #
  # Every decision a worker makes (slots, claim and report batching, lease renewal, timeouts,
  # store back-off, drain, idleness) is the core's {WorkerSession}. This class is the Ruby glue:
  # +concurrency+ Ruby threads each ask the session for the next attempt (without the GVL while
  # they wait), run its handler and hand the outcome back; signals stop a run. A handler cannot
  # be killed: one that outlives its step's +timeout_ms+ has its attempt failed ("timed out")
  # and its late return is refused and logged.
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
    # The signals that stop {#run} cleanly when it runs in the main thread.
    SIGNALS = %w[INT TERM].freeze

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
    # @param drain_timeout [Numeric] seconds running handlers may take to finish after {#stop}
    #   before their steps are released (pending again, the attempt not counted)
    def initialize(engine, concurrency: 4, worker_id: nil, poll_interval: 0.1, drain_timeout: 30,
                   executor: TaskerCore.executor)
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
      @drain_timeout = drain_timeout.to_f
      @executor = executor
      @handlers = {}
      @handlers_lock = Mutex.new
      @run_lock = Mutex.new
      @stop_requested = false
      @session = nil
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

    # Works until nothing is ready, running or waiting for a retry (for this worker's handlers),
    # or +timeout+ seconds; running handlers then finish and report.
    #
    # @param timeout [Numeric, nil] seconds; nil: no limit
    # @return [Hash{String => Integer, Boolean}] +"completed"+, +"failed"+ (retryable or not),
    #   +"lost"+ (outcomes the engine did not record), +"released"+ (steps given back unfinished)
    #   and +"idle"+ (whether the run ended because there was nothing left to do)
    # @raise [RuntimeError] without handlers, or while the worker runs already
    def run_until_idle(timeout: nil)
      unless timeout.nil?
        raise TypeError, "timeout must be a number of seconds or nil, not #{timeout.class}" unless timeout.is_a?(Numeric)
        raise ArgumentError, "timeout must be >= 0 seconds, not #{timeout.inspect}" unless timeout.to_f >= 0
      end
      run_loop(until_idle: true, timeout: timeout&.to_f)
    end

    # Works until {#stop} (from another thread or a handler), SIGINT or SIGTERM, then drains: no
    # new claims, running handlers finish and report (up to +drain_timeout+), the rest is
    # released. From the main thread it traps INT and TERM for its duration (an ignored signal
    # stays ignored); a second signal releases what still runs at once.
    #
    # @return [Hash{String => Integer, Boolean}] the counts, as {#run_until_idle} returns them
    def run
      run_loop(until_idle: false, timeout: nil)
    end

    # Asks the run to drain and return. A stop requested before a run starts makes that run
    # return at once; the request is used up by the run it ends. Safe from any thread, a handler
    # and a trap.
    #
    # @return [void]
    def stop
      session = @session
      if session.nil?
        @stop_requested = true
      else
        session.stop
      end
      nil
    end

    # @!visibility private
    def inspect
      "#<TaskerCore::Worker #{worker_id} concurrency=#{concurrency} handlers=#{handlers.inspect}>"
    end

    private

    def run_loop(until_idle:, timeout:)
      raise "this worker is running already; a worker runs one loop at a time" unless @run_lock.try_lock

      begin
        names = handlers
        raise "the worker has no handlers: register some with worker.handler(name) { |step| ... }" if names.empty?

        session = WorkerSession.new(@engine, names, @concurrency, @worker_id, @poll_interval, @drain_timeout,
                                    until_idle, timeout)
        @session = session
        if @stop_requested
          @stop_requested = false
          session.stop
        end
        previous_traps = until_idle ? {} : install_traps(session)
        begin
          work(session, names)
        ensure
          restore_traps(previous_traps)
          @session = nil
        end
      ensure
        @run_lock.unlock
      end
    end

    def work(session, names)
      logger.info { "worker #{@worker_id} started: handlers #{names.join(', ')}, concurrency #{@concurrency}" }
      threads = Array.new(@concurrency) do |i|
        Thread.new do
          Thread.current.name = "tasker_core-#{@worker_id}-#{i}"
          serve(session)
        end
      end
      counts = nil
      counts = session.result(0.2) while counts.nil?
      threads.each { |t| t.join(1) }
      logger.info { "worker #{@worker_id} stopped" } if @signals_seen.to_i.positive? || !counts["idle"]
      logger.info do
        "worker #{@worker_id} finished: #{counts['completed']} completed, #{counts['failed']} failed, " \
          "#{counts['lost']} lost, #{counts['released']} released#{counts['idle'] ? ' (idle)' : ''}"
      end
      counts
    end

    # One handler thread: next attempt, handler, outcome, until the session ends.
    def serve(session)
      loop do
        claimed = session.next(0.5)
        if claimed.nil?
          break if session.finished?

          next
        end
        step = Step.from_claim(claimed, session)
        refused = execute(session, step)
        logger.warn { "step #{step.name.inspect} (#{step.step_id}) attempt #{step.attempt}: #{refused}" } if refused
      end
    end

    def execute(session, step)
      where = "step #{step.name.inspect} (#{step.step_id}) attempt #{step.attempt}/#{step.max_attempts}"
      fn = @handlers_lock.synchronize { @handlers[step.handler] }
      begin
        raise RetryableError, "no handler named #{step.handler.inspect} is registered" if fn.nil?

        result = @executor.nil? ? fn.call(step) : @executor.wrap { fn.call(step) }
      rescue RetryableError => e
        logger.info { "#{where} failed, retryable: #{e.message}" }
        return session.fail(step.step_id, step.attempt, utf8(e.message), true, e.retry_after)
      rescue PermanentError => e
        logger.warn { "#{where} failed permanently: #{e.message}" }
        return session.fail(step.step_id, step.attempt, utf8(e.message), false, nil)
      rescue Exception => e # rubocop:disable Lint/RescueException -- any other error is a retryable failure
        logger.error { "#{where} raised #{e.class}: #{e.message}\n#{(e.backtrace || []).join("\n")}" }
        return session.fail(step.step_id, step.attempt, utf8("#{e.class}: #{e.message}"), true, nil)
      end
      begin
        session.complete(step.step_id, step.attempt, result)
      rescue TypeError, RangeError, EncodingError, TaskerCore::Error => e
        session.fail(step.step_id, step.attempt, utf8("result is not JSON-serialisable: #{e.message}"), false, nil)
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

      arity = callable.is_a?(Proc) || callable.is_a?(Method) ? callable.arity : callable.method(:call).arity
      return if arity == 1 || (arity.negative? && arity >= -2)

      raise ArgumentError, "the handler #{name.inspect} must take one argument (the step), its call takes #{arity}"
    rescue NameError
      nil # call answered through method_missing: nothing to check
    end

    # -- signals: the first drains, the second releases what still runs ---------------------

    def install_traps(session)
      return {} unless Thread.current == Thread.main

      @signals_seen = 0
      previous = {}
      SIGNALS.each do |sig|
        old = Signal.trap(sig) { on_signal(session) }
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
    def on_signal(session)
      @signals_seen += 1
      @signals_seen == 1 ? session.stop : session.abort
    end

    def logger
      TaskerCore.logger
    end
  end
end
