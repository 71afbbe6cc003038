# spade's rb> runner: calls `method`, `Class.method` or `Name::Space::Class.method` (an
# instance method on a new instance when the class has one by that name, else the class
# method) with arguments taken from the task's params by name, and writes what it stored,
# exported and generated to the output file. Digdag's runner protocol: argv is COMMAND
# INPUT_JSON OUTPUT_JSON, the input {"params": {...}}, the output {"store_params",
# "export_params", "subtask_config", "error"?}.
require 'json'

command, input_path, output_path = ARGV[0], ARGV[1], ARGV[2]
params = JSON.parse(File.read(input_path))['params']

module Digdag
  # What a task's Ruby code sees as `Digdag.env`.
  class Env
    attr_reader :params, :subtask_config, :export_params, :store_params, :state_params

    def initialize(params)
      @params = params
      @subtask_config = {}
      @export_params = {}
      @store_params = {}
      @state_params = {}
      @subtasks = 0
    end

    def store(params = {}, **more)
      @store_params.merge!(stringify(params)).merge!(stringify(more))
    end

    def export(params = {}, **more)
      @export_params.merge!(stringify(params)).merge!(stringify(more))
    end

    def set_state(params = {}, **more)
      @state_params.merge!(stringify(params)).merge!(stringify(more))
    end

    # add_subtask(config), add_subtask(:singleton_method, params = {}),
    # add_subtask(Klass, :method, params = {})
    def add_subtask(*args)
      config =
        if args.length == 1 && args[0].is_a?(Hash)
          stringify(args[0])
        elsif args.length <= 2 && !args[0].is_a?(Class) && (args.length == 1 || args[1].is_a?(Hash))
          name = method_name(args[0])
          stringify(args[1] || {}).merge('rb>' => name)
        elsif args.length == 2 || (args.length == 3 && args[2].is_a?(Hash))
          klass = args[0].is_a?(Class) ? args[0] : Kernel.const_get(args[0].to_s)
          name = method_name(args[1])
          unless klass.respond_to?(name) || klass.public_instance_methods.include?(name.to_sym)
            raise ArgumentError, "Class #{klass} does not have method #{name.inspect}"
          end
          stringify(args[2] || {}).merge('rb>' => "::#{klass}.#{name}")
        else
          raise ArgumentError, "wrong number of arguments (#{args.length} for 1..3, the last one a Hash)"
        end
      begin
        JSON.generate(config)
      rescue StandardError => e
        raise ArgumentError, "Parameters must be serializable using JSON: #{e}"
      end
      @subtask_config["+subtask#{@subtasks}"] = config
      @subtasks += 1
      nil
    end

    private

    def method_name(name)
      name = name.to_s
      raise ArgumentError, "Method name can't include '.'" if name.include?('.')
      name
    end

    def stringify(hash)
      hash.each_with_object({}) { |(k, v), out| out[k.to_s] = v }
    end
  end

  def self.env
    @env
  end

  def self.env=(env)
    @env = env
  end
end

Digdag.env = Digdag::Env.new(params)

# The task's files live in the workspace (the working directory).
$LOAD_PATH << File.expand_path(Dir.pwd)

def spade_arguments(callable, params, label)
  args = []
  keywords = nil
  callable.parameters.each do |kind, name|
    key = name.to_s
    case kind
    when :req
      raise ArgumentError, "Method '#{label}' requires parameter '#{key}' but not set" unless params.key?(key)
      args << params[key]
    when :opt
      args << params[key] if params.key?(key)
    when :keyreq
      raise ArgumentError, "Method '#{label}' requires parameter '#{key}' but not set" unless params.key?(key)
      (keywords ||= {})[name] = params[key]
    when :key
      (keywords ||= {})[name] = params[key] if params.key?(key)
    when :keyrest
      keywords ||= {}
      params.each { |k, v| keywords[k.to_sym] = v }
    end
  end
  [args, keywords]
end

def spade_call(receiver, callable, params, label)
  args, keywords = spade_arguments(callable, params, label)
  if keywords
    receiver.send(callable.name, *args, **keywords)
  else
    receiver.send(callable.name, *args)
  end
end

error = nil
begin
  parts = command.split('.')
  name = parts.pop.to_sym
  if parts.empty?
    spade_call(self, method(name), params, name.to_s)
  else
    klass = Kernel.const_get(parts.join('.'))
    if klass.public_instance_methods.include?(name)
      init = klass.instance_method(:initialize)
      new_args, new_keywords = spade_arguments(init, params, "#{klass}#initialize")
      instance = new_keywords ? klass.new(*new_args, **new_keywords) : klass.new(*new_args)
      spade_call(instance, instance.method(name), params, "#{klass}##{name}")
    else
      spade_call(klass, klass.method(name), params, "#{klass}.#{name}")
    end
  end
rescue Exception => e # rubocop:disable Lint/RescueException
  raise if e.is_a?(SystemExit) && e.success?
  error = e
end

out = {
  'subtask_config' => Digdag.env.subtask_config,
  'export_params' => Digdag.env.export_params,
  'store_params' => Digdag.env.store_params
}
if error
  out['error'] = { 'class' => error.class.to_s, 'message' => error.message, 'backtrace' => error.backtrace || [] }
end
File.write(output_path, JSON.generate(out))

if error
  $stderr.puts "#{error.class}: #{error.message}"
  (error.backtrace || []).each { |line| $stderr.puts "\tfrom #{line}" }
  exit 1
end
