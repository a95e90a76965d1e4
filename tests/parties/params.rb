# A Rack upstream for tests/no_bypass_fields.rs (`ruby params.rb PORT LOG`), on WEBrick:
# logs, one JSON line per request, the method Rails would route (Rack::MethodOverride reads a
# form's `_method`) and the parameters as Rack read them (Rack::Request#params, what Rails
# and Sinatra build `params` from).
require 'json'
require 'rack'
require 'webrick'

port = Integer(ARGV.fetch(0))
log = ARGV.fetch(1)
app = lambda do |env|
  req = Rack::Request.new(env)
  line = JSON.generate(
    server: 'rack',
    method: env['REQUEST_METHOD'],
    original_method: env['rack.methodoverride.original_method'],
    path: req.path,
    params: req.params
  )
  File.open(log, 'a') { |f| f.puts(line) }
  [200, { 'Content-Type' => 'application/json' }, [line]]
end
app = Rack::MethodOverride.new(app)
Rack::Handler::WEBrick.run(app, Host: '127.0.0.1', Port: port, AccessLog: [],
                                Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN))
