# frozen_string_literal: true

module TaskerCore
  # Templates built in code: {Template.build} returns the Hash a template document would be,
  # which {Engine#register_template} takes and checks as it checks any template.
  #
  # @example
  #   engine.register_template(
  #     TaskerCore::Template.build("shop", "fulfil_order", "1.0.0") do
  #       step :validate, timeout_ms: 30_000
  #       step :charge, depends_on: [:validate], retry: { max_attempts: 5 }
  #       step :notify, depends_on: [{ step: :charge, requires_success: false }]
  #     end
  #   )
  class Template
    # The keys a step takes besides its name.
    STEP_KEYS = %i[handler description depends_on retry timeout_ms lease_ms config events type batch].freeze

    # @param namespace [String, Symbol]
    # @param name [String, Symbol]
    # @param version [String]
    # @param options [Hash] +description:+, +input_schema:+, +defaults:+, +events:+ (the custom
    #   events every step may publish)
    # @yield the steps, as +step :name, **fields+ calls
    # @return [Hash] the template
    def self.build(namespace, name, version, **options, &block)
      template = new(namespace, name, version, **options)
      template.instance_eval(&block) if block
      template.to_h
    end

    # @raise [ArgumentError] for an option a template does not have
    def initialize(namespace, name, version, description: nil, input_schema: nil, defaults: nil, events: nil)
      @hash = { "namespace" => namespace.to_s, "name" => name.to_s, "version" => version.to_s }
      { "description" => description, "input_schema" => input_schema, "defaults" => defaults,
        "events" => events }.each do |key, value|
        @hash[key] = value unless value.nil?
      end
      @hash["steps"] = []
    end

    # Adds the step +name+ with the fields of a template's step.
    # @return [self]
    # @raise [ArgumentError] for a field a step does not have
    def step(name, **fields)
      unknown = fields.keys.map(&:to_sym) - STEP_KEYS
      raise ArgumentError, "unknown step field#{'s' if unknown.size > 1} #{unknown.join(', ')} for step #{name}" unless unknown.empty?

      @hash["steps"] << { "name" => name.to_s }.merge(fields.transform_keys(&:to_s))
      self
    end

    # @return [Hash] the template
    def to_h
      @hash
    end
  end
end
