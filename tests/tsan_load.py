# The load of tests/tsan_serve.sh: 12 clients asking (plain, streamed, hanging up mid-stream),
# chat completions, searches (/search), /metrics, HEAD and GET /v1/info, with keys "k1" (always valid) and "k2" (valid
# every other reload), while the main thread rewrites the key file and sends SIGHUP every 0.3 s.
#   tsan_load.py PORT SERVER_PID KEY_FILE SECONDS
# Prints what came back per kind and status; exits 1 unless every kind got some 200s.
import http.client, json, os, random, signal, socket, sys, threading, time
port, pid, keys = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
stop = time.time() + float(sys.argv[4])
counts = {}
lock = threading.Lock()
def note(k):
    with lock: counts[k] = counts.get(k, 0) + 1
def worker(i):
    rnd = random.Random(i)
    while time.time() < stop:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            kind = rnd.choice(["ask", "ask", "stream", "cancel", "chat", "search", "metrics", "head",
                               "info"])
            key = rnd.choice(["k1", "k1", "k2"])
            h = {"X-API-Key": key, "Content-Type": "application/json"}
            q = rnd.choice(["What is the server?", "How are answers scored?", "Which kernels run?"])
            if kind in ("ask", "stream", "cancel"):
                body = {"question": q, "max_new_tokens": rnd.randint(1, 12), "k": rnd.randint(1, 4),
                        "stream": kind != "ask"}
                c.request("POST", "/ask", json.dumps(body), h)
                r = c.getresponse()
                if kind == "cancel":
                    r.read(20); c.sock.shutdown(socket.SHUT_RDWR); c.close(); note("cancel"); continue
                r.read(); note(f"{kind}:{r.status}")
            elif kind == "chat":
                body = {"messages": [{"role": "user", "content": q}], "max_tokens": 4, "stream": rnd.random() < 0.5}
                c.request("POST", "/v1/chat/completions", json.dumps(body), h)
                r = c.getresponse(); r.read(); note(f"chat:{r.status}")
            elif kind == "search":
                body = {"question": q, "k": rnd.randint(1, 8)}
                c.request("POST", "/search", json.dumps(body), h)
                r = c.getresponse(); r.read(); note(f"search:{r.status}")
            elif kind == "metrics":
                c.request("GET", "/metrics"); r = c.getresponse(); r.read(); note(f"metrics:{r.status}")
            elif kind == "head":
                c.request("HEAD", "/v1/info", headers=h); r = c.getresponse(); r.read(); note(f"head:{r.status}")
            else:
                c.request("GET", "/v1/info", headers=h); r = c.getresponse(); r.read(); note(f"info:{r.status}")
            c.close()
        except Exception as e:
            note("error:" + type(e).__name__)
threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
for t in threads: t.start()
n = 0
while time.time() < stop:
    time.sleep(0.3)
    n += 1
    tmp = keys + ".tmp"
    open(tmp, "w").write("k1\n" if n % 2 else "k1\nk2\n")
    os.rename(tmp, keys)
    os.kill(pid, signal.SIGHUP)
for t in threads: t.join()
print(json.dumps(dict(sorted(counts.items()))), "reloads:", n)
missing = [k for k in ("ask", "stream", "chat", "search", "metrics", "head", "info")
           if not counts.get(k + ":200")]
if missing or not counts.get("cancel"):
    print("FAIL: nothing answered 200 for", missing or "cancel")
    sys.exit(1)
