# frozen_string_literal: true

require "net/http"
require "uri"
require "rack"

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
    # The methods passed on; others are answered 405 here.
    METHODS = { "GET" => Net::HTTP::Get, "HEAD" => Net::HTTP::Head, "POST" => Net::HTTP::Post }.freeze
    # The largest request body passed on, in bytes (the dashboard's forms are a few hundred
    # bytes); a larger one is answered 413 without reading the rest.
    MAX_BODY = 64 * 1024

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
      method = METHODS[env["REQUEST_METHOD"]]
      return plain(405, "method not allowed\n", "allow" => METHODS.keys.join(", ")) if method.nil?

      request = build(method, env)
      return plain(413, "request body over #{MAX_BODY} bytes\n") if request.nil?

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
      plain(502, message)
    end

    private

    def plain(status, text, headers = {})
      [status, { "content-type" => "text/plain; charset=utf-8" }.merge(headers), [text]]
    end

    # The request to the dashboard: the whole path (mount point included, which the dashboard
    # serves under with --base-path), the query, the body and the forwarded headers; nil when
    # the body is over MAX_BODY.
    def build(method, env)
      path = "#{env['SCRIPT_NAME']}#{env['PATH_INFO']}"
      path = "/" if path.empty?
      query = env["QUERY_STRING"].to_s
      path = "#{path}?#{query}" unless query.empty?
      request = method.new(path)
      FORWARDED.each do |name|
        key = name == "Content-Type" ? "CONTENT_TYPE" : "HTTP_#{name.upcase.tr('-', '_')}"
        request[name] = env[key] if env[key] && !env[key].empty?
      end
      # The host the browser asked for, as Rack reads it (behind a front proxy, that proxy's
      # X-Forwarded-Host): the dashboard compares it with the form's Origin.
      host = Rack::Request.new(env).host_with_port
      request["X-Forwarded-Host"] = host unless host.to_s.empty?
      request["X-Forwarded-Proto"] = env["rack.url_scheme"] if env["rack.url_scheme"]
      if request.request_body_permitted?
        body = read_body(env["rack.input"])
        return nil if body.nil?

        request.body = body
      end
      request
    end

    # At most MAX_BODY bytes of the request body, or nil when there are more.
    def read_body(input)
      return "" if input.nil?

      body = input.read(MAX_BODY + 1).to_s
      input.rewind if input.respond_to?(:rewind)
      body.bytesize > MAX_BODY ? nil : body
    end
  end
end
