# frozen_string_literal: true

require "fileutils"
require "active_support/notifications"
require "active_support/ordered_options"

module TaskerCore
  # Rails integration, loaded by +require "tasker_core"+ when Rails is.
  #
  # Configuration (in +config/application.rb+, an environment file or an initializer):
  #
  #   config.tasker_core.database_url   = ENV["TASKER_DATABASE_URL"]  # default below
  #   config.tasker_core.concurrency    = 8                           # rake tasker_core:work
  #   config.tasker_core.templates_path = "config/tasker/templates"   # relative to Rails.root
  #
  # +database_url+ defaults to +ENV["TASKER_DATABASE_URL"]+, else
  # +sqlite://<Rails.root>/db/tasker_core_<Rails.env>.sqlite3+.
  #
  # At boot the Railtie opens {TaskerCore.engine}, registers every +*.yml+ template of
  # +templates_path+, and re-publishes every engine event through
  # +ActiveSupport::Notifications+ as +"<event name>.tasker_core"+ (e.g.
  # +"task.completed.tasker_core"+, the event Hash as payload). It adds the rake tasks
  # +tasker_core:work+, +tasker_core:status+ and +tasker_core:dashboard+ (the +tasker serve+
  # dashboard on this store, for {TaskerCore::Dashboard} to mount in the app's routes).
  #
  # @example subscribing to events
  #   ActiveSupport::Notifications.subscribe(/\.tasker_core\z/) do |name, _start, _finish, _id, event|
  #     Rails.logger.info("#{name} #{event['task_id']} #{event['step_name']}")
  #   end
  class Railtie < ::Rails::Railtie
    config.tasker_core = ActiveSupport::OrderedOptions.new
    config.tasker_core.database_url = nil
    config.tasker_core.concurrency = 4
    config.tasker_core.templates_path = "config/tasker/templates"

    # After config/initializers, so that the configuration may be set there too.
    initializer "tasker_core.engine", after: :load_config_initializers do |app|
      options = app.config.tasker_core
      url = Railtie.database_url(app)
      TaskerCore.open(url)
      TaskerCore.executor ||= app.executor
      # Rails Tasker handler classes run unchanged, unless the Tasker gem itself is loaded.
      require "tasker_core/compat" unless defined?(::Tasker::Engine)
      Railtie.load_templates(TaskerCore.engine, Railtie.templates_dir(app))
      Railtie.events.start(TaskerCore.engine)
      TaskerCore.after_fork { |engine| Railtie.events.start(engine) }
      options.database_url ||= url
    end

    rake_tasks do
      load File.expand_path("tasks.rake", __dir__)
    end

    class << self
      # The store URL: +config.tasker_core.database_url+, +ENV["TASKER_DATABASE_URL"]+ or an
      # SQLite file under db/ (whose directory is made when missing).
      #
      # @return [String]
      def database_url(app)
        url = app.config.tasker_core.database_url
        url = ENV["TASKER_DATABASE_URL"] if url.nil? || url.to_s.empty?
        return url.to_s unless url.nil? || url.to_s.empty?

        path = app.root.join("db", "tasker_core_#{::Rails.env}.sqlite3").to_s
        FileUtils.mkdir_p(File.dirname(path))
        "sqlite://#{path}"
      end

      # @return [String] the absolute path of the templates directory
      def templates_dir(app)
        File.expand_path(app.config.tasker_core.templates_path.to_s, app.root.to_s)
      end

      # Registers every +*.yml+ (and +*.yaml+) file of +dir+, in name order.
      #
      # @return [Array<Hash>] what {Engine#register_template} returned for each
      # @raise [TemplateError] naming the file of an invalid template
      def load_templates(engine, dir)
        Dir.glob(File.join(dir, "*.{yml,yaml}")).sort.map do |file|
          engine.register_template(File.read(file))
        rescue TaskerCore::TemplateError => e
          raise e.class, "#{file}: #{e.message}", e.backtrace
        end
      end

      # @return [EventRelay] the relay of engine events to ActiveSupport::Notifications
      def events
        @events ||= EventRelay.new
      end
    end

    # Drains a subscription to every engine event on a background Ruby thread and
    # instruments each event as +"<name>.tasker_core"+. The thread waits in
    # +Subscription#next(timeout: 0.2)+, without the GVL, and ends when the engine closes.
    class EventRelay
      # Seconds one wait for an event lasts (how soon {#stop} is noticed).
      POLL = 0.2

      def initialize
        @lock = Mutex.new
        @thread = nil
        @stopping = false
      end

      # Starts relaying the events of +engine+ (stops relaying those of an earlier engine).
      # @return [void]
      def start(engine)
        stop
        subscription = engine.subscribe("*")
        @lock.synchronize do
          @stopping = false
          @thread = Thread.new { relay(subscription) }
          @thread.name = "tasker_core-events"
        end
      end

      # Stops the relay thread (waits for it to notice).
      # @return [void]
      def stop
        thread = @lock.synchronize do
          @stopping = true
          t = @thread
          @thread = nil
          t
        end
        return if thread.nil? || thread == Thread.current || !thread.alive?

        thread.join(POLL * 5) || thread.kill
      end

      # @return [Boolean] whether the relay thread runs
      def running?
        @lock.synchronize { !@thread.nil? && @thread.alive? }
      end

      private

      def relay(subscription)
        until @stopping
          begin
            event = subscription.next(timeout: POLL)
          rescue TaskerCore::StoreError
            break # the engine was closed
          rescue TaskerCore::Error => e
            TaskerCore.logger.error { "the tasker_core event relay stopped: #{e.class}: #{e.message}" }
            break
          end
          next if event.nil?

          begin
            ActiveSupport::Notifications.instrument("#{event['name']}.tasker_core", event)
          rescue StandardError => e
            TaskerCore.logger.error do
              "an ActiveSupport::Notifications subscriber of #{event['name']}.tasker_core raised " \
                "#{e.class}: #{e.message}\n#{(e.backtrace || []).join("\n")}"
            end
          end
        end
      end
    end
  end
end
