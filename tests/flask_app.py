"""A real framework app: Flask routes, a streaming route and a non-ASCII path."""

import time

from flask import Flask, Response, request, stream_with_context

app = Flask(__name__)


@app.route("/")
def index():
    return "flask ok"


@app.route("/café")
def cafe():
    return "café route"


@app.route("/echo", methods=["POST"])
def echo():
    data = request.get_data(cache=True)
    return {"form": request.form.to_dict(), "len": len(data)}


@app.route("/events")
def events():
    def gen():
        for i in range(4):
            yield f"data: {i} {time.time()}\n\n"
            time.sleep(0.25)
    return Response(stream_with_context(gen()), mimetype="text/event-stream")
