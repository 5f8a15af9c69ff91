# frozen_string_literal: true

require "net/http"
require "uri"

module TaskerCore
  # A Rack application that shows the +tasker serve+ dashboard inside a Rails (or any Rack)
  # app: every request under its mount point is passed to the dashboard process and its answer
  # passed back. The dashboard itself (pages, token, CSRF check, read-only mode) is the +tasker+
  # binary's; this class only forwards.
  #
  # Start the dashboard with the same base path as the mount point (+rake tasker_core:dashboard+
  # does, with the app's store URL), then mount it:
  #
  # @example config/routes.rb
  #   mount TaskerCore::Dashboard.new(upstream: ENV.fetch("TASKER_DASHBOARD_URL", "http://127.0.0.1:8080")),
  #         at: "/tasker"
  #
  # Put the mount behind the app's own authentication (a routes +constraints+ block or
  # +authenticate+ from Devise) if the pages themselves must not be seen; the acts always need
  # the operator token.
  class Dashboard
    # The request headers passed on (Host is the dashboard's own; the browser's host goes as
    # +X-Forwarded-Host+, which the dashboard's origin check accepts).
    FORWARDED = %w[Accept Accept-Language Authorization Content-Type Origin Referer User-Agent].freeze
    # The response headers passed back.
    RETURNED = %w[content-type location cache-control].freeze

    # @param upstream [String] where +tasker serve+ listens, such as +"http://127.0.0.1:8080"+
    # @param open_timeout [Numeric] seconds to wait for the connection
    # @param read_timeout [Numeric] seconds to wait for an answer
    # @raise [ArgumentError] when +upstream+ is not an http(s) URL
    def initialize(upstream:, open_timeout: 2, read_timeout: 30)
      @upstream = URI.parse(upstream.to_s)
      unless @upstream.is_a?(URI::HTTP) && @upstream.host
        raise ArgumentError, "upstream #{upstream.inspect} is not an http(s) URL such as http://127.0.0.1:8080"
      end

      @open_timeout = open_timeout
      @read_timeout = read_timeout
    end

    # @param env [Hash] the Rack environment
    # @return [Array] a Rack response
    def call(env)
      request = build(env)
      return [405, { "content-type" => "text/plain" }, ["method not allowed\n"]] if request.nil?

      response = Net::HTTP.start(@upstream.host, @upstream.port, use_ssl: @upstream.scheme == "https",
                                                                 open_timeout: @open_timeout,
                                                                 read_timeout: @read_timeout) do |http|
        http.request(request)
      end
      headers = {}
      RETURNED.each { |name| headers[name] = response[name] if response[name] }
      [response.code.to_i, headers, [response.body.to_s]]
    rescue SystemCallError, IOError, Timeout::Error, SocketError, Net::HTTPBadResponse,
           Net::HTTPHeaderSyntaxError => e
      message = "the tasker dashboard at #{@upstream} did not answer (#{e.class}: #{e.message}); " \
                "is `rake tasker_core:dashboard` (tasker serve) running?\n"
      [502, { "content-type" => "text/plain; charset=utf-8" }, [message]]
    end

    private

    # The request to the dashboard: the whole path (mount point included, which the dashboard
    # serves under with --base-path), the query, the body and the forwarded headers.
    def build(env)
      path = "#{env['SCRIPT_NAME']}#{env['PATH_INFO']}"
      path = "/" if path.empty?
      query = env["QUERY_STRING"].to_s
      path = "#{path}?#{query}" unless query.empty?
      request = case env["REQUEST_METHOD"]
                when "GET" then Net::HTTP::Get.new(path)
                when "HEAD" then Net::HTTP::Head.new(path)
                when "POST" then Net::HTTP::Post.new(path)
                end
      return nil if request.nil?

      FORWARDED.each do |name|
        key = name == "Content-Type" ? "CONTENT_TYPE" : "HTTP_#{name.upcase.tr('-', '_')}"
        request[name] = env[key] if env[key] && !env[key].empty?
      end
      request["X-Forwarded-Host"] = env["HTTP_HOST"] if env["HTTP_HOST"]
      request["X-Forwarded-Proto"] = env["rack.url_scheme"] if env["rack.url_scheme"]
      if request.request_body_permitted?
        input = env["rack.input"]
        request.body = input ? input.read.to_s : ""
        input.rewind if input.respond_to?(:rewind)
      end
      request
    end
  end
end
