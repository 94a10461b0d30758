import random

rng = random.Random(7)
hosts = ["10.0.0.%d" % i for i in range(1, 13)]
paths = ["/", "/login", "/api/items", "/api/cart", "/static/app.js"]
for i in range(3000):
    host = rng.choice(hosts)
    status = rng.choice([200, 200, 200, 301, 404, 500, 502, 503]) if host < "10.0.0.5" else rng.choice([200, 404, 500])
    print('%s - - [04/Dec/2026:10:%02d:%02d +0000] "GET %s HTTP/1.1" %d %d'
          % (host, (i // 60) % 60, i % 60, rng.choice(paths), status, rng.randint(100, 5000)))
