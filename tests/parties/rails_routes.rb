# A Rails routing upstream for tests/no_bypass.rs (`ruby rails_routes.rb PORT LOG`), on
# WEBrick: ActionDispatch's router with the routes `resources` draws (each with Rails'
# optional `(.:format)`, so `/items/7.json` runs `show` with id 7), and each action logs one
# JSON line: what ran, with the parameters Rails gave it and, for an `id`, the record
# ActiveRecord's `find` would load (its integer type casts `"7abc"` to 7).
require 'json'
require 'rack'
require 'webrick'
require 'action_dispatch'
require 'action_controller'
require 'active_model'

PORT = Integer(ARGV.fetch(0))
LOG = ARGV.fetch(1)

# Each action: one JSON line to the log, and the same as the answer.
class Logged < ActionController::Metal
  def ran(action)
    record = params[:id] && ActiveModel::Type::Integer.new.cast(params[:id])
    line = JSON.generate(server: 'rails', ran: action, path: request.path,
                         params: params.to_h.except('controller', 'action'), record: record)
    File.open(LOG, 'a') { |f| f.puts(line) }
    self.content_type = 'application/json'
    self.response_body = line
  end
end

class ItemsController < Logged
  def index = ran('index')
  def show = ran('show')
  def destroy = ran('destroy')
end

class AdminController < Logged
  def users = ran('admin_users')
  def status = ran('admin_status')
  def section = ran('admin_section')
end

routes = ActionDispatch::Routing::RouteSet.new
routes.draw do
  resources :items, only: %i[index show destroy]
  get 'admin/users', to: 'admin#users'
  # Rails matches literals in their own case: `/admin/STATUS` is a section.
  get 'admin/status', to: 'admin#status'
  get 'admin/:section', to: 'admin#section'
end

Rack::Handler::WEBrick.run(routes, Host: '127.0.0.1', Port: PORT, AccessLog: [],
                                   Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN))
