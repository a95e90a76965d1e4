"""An upstream for no_bypass_fields.rs: a Flask refunds service as commonly written. It takes form
posts and JSON posts (by the request's mimetype, as werkzeug reads it) and inflates a request
body sent with Content-Encoding gzip/deflate (as Jetty/ASP.NET/middleware do). Every request it
runs is appended to --log as one JSON line."""
import argparse, gzip, json, zlib

from flask import Flask, request, jsonify

app = Flask(__name__)


@app.before_request
def inflate():
    enc = (request.headers.get("Content-Encoding") or "").strip().lower()
    if enc in ("gzip", "deflate"):
        raw = request.get_data()
        data = gzip.decompress(raw) if enc == "gzip" else zlib.decompress(raw)
        request._cached_data = data
        request.environ["atk.inflated"] = enc


@app.route("/v1/payments/<pid>/refund", methods=["POST"])
def refund(pid):
    if request.mimetype == "application/x-www-form-urlencoded":
        src, amount, to = "form", request.form.get("amount"), request.form.get("to")
    else:
        body = request.get_json(force=True, silent=True) or {}
        src, amount, to = "json", body.get("amount"), body.get("to")
    with open(app.config["LOG"], "a") as f:
        f.write(json.dumps({"ran": "refund", "pid": pid, "src": src, "amount": amount, "to": to,
                            "inflated": request.environ.get("atk.inflated"),
                            "ct": request.headers.get("Content-Type")}) + "\n")
    return jsonify(refunded=pid, amount=amount)


@app.route("/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def other(rest):
    with open(app.config["LOG"], "a") as f:
        f.write(json.dumps({"ran": "other", "path": request.path, "method": request.method}) + "\n")
    return jsonify(other=rest)


p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--log", required=True)
a = p.parse_args()
app.config["LOG"] = a.log
app.run(host="127.0.0.1", port=a.port, threaded=True)
