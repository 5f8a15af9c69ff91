# frozen_string_literal: true

module TaskerCore
  # The version of the gem (and of the engine compiled into it).
  VERSION = "0.1.0"
end
