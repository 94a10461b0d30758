import configparser
import subprocess
import time
import urllib.request


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


EXPECTED = read("/tests/expected_total")


def verdict() -> bool:
    try:
        answer = read("/app/answer.txt")
    except OSError:
        print("no /app/answer.txt")
        return False
    config = configparser.ConfigParser()
    config.read("/app/service/service.conf")
    port = int(config["service"]["port"])
    server = subprocess.Popen(["python3", "/app/service/server.py"], cwd="/app/service")
    try:
        for _ in range(50):
            try:
                total = urllib.request.urlopen("http://127.0.0.1:%d/total" % port, timeout=2).read().decode().strip()
                break
            except OSError:
                time.sleep(0.2)
        else:
            print("the service did not start")
            return False
    finally:
        server.kill()
    print("service says %s, answer %s, expected %s" % (total, answer, EXPECTED))
    return total == EXPECTED and answer == EXPECTED


with open("/logs/verifier/reward.txt", "w") as f:
    f.write("1" if verdict() else "0")
