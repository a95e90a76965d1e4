"""A Flask service as an attacker meets it: werkzeug routes the request, and each view reads
its arguments the way Flask services commonly do (JSON whatever the label, else the form,
else the query). Every view that runs appends one JSON line to --log, so a test can tell
whether a call the policy denies was executed, and with which arguments."""
import argparse
import json

from flask import Flask, jsonify, request

app = Flask(__name__)


def ran(function, **fields):
    with open(app.config["LOG"], "a") as log:
        log.write(json.dumps({"ran": function, "method": request.method,
                              "path": request.path, "host": request.host, **fields}) + "\n")


def arg(name):
    body = request.get_json(force=True, silent=True)
    if isinstance(body, dict) and name in body:
        return body[name]
    return request.values.get(name)


@app.route("/v1/payments/<pid>/refund", methods=["POST"])
def refund(pid):
    ran("refund", pid=pid, amount=arg("amount"), to=arg("to"))
    return jsonify(refunded=pid, amount=arg("amount"))


@app.route("/v1/payments/<pid>", methods=["GET"])
def get_payment(pid):
    ran("get_payment", pid=pid)
    return jsonify(id=pid, status="settled")


@app.route("/v1/payments/<pid>/export", methods=["GET"])
def export(pid):
    # A GET with an effect: Flask runs it for a HEAD too, and drops only the body.
    ran("export", pid=pid)
    return jsonify(exported=pid)


@app.route("/v1/accounts/<int:account>", methods=["DELETE"])
def close_account(account):
    # werkzeug's `int` converter: `\d+` of any script, read by Python's `int`.
    ran("close_account", account=account)
    return jsonify(closed=account)


@app.route("/admin/<path:rest>", methods=["GET", "POST"])
def admin(rest):
    ran("admin", rest=rest)
    return jsonify(admin=rest)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    a = p.parse_args()
    app.config["LOG"] = a.log
    app.run(host="127.0.0.1", port=a.port, threaded=True)


if __name__ == "__main__":
    main()
