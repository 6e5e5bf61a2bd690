"""The official ThingsBoard Python SDK as a publisher for bench-e2e (run by `bench-e2e run`).

    python sdk_publisher.py --port P --qos 0|1 --count N [--inflight N]

Connects a TBGatewayMqttClient (tb-mqtt-client 1.13.14) to 127.0.0.1:P, then sends the
anchor's gateway telemetry with gw_send_telemetry, cycling over 1000 device names with the
timestamp incrementing, waits until the last message is published (QoS 1: acknowledged; the
broker acknowledges in order), and prints one line:

    RESULT start_ns=.. end_ns=.. cpu_ns=.. sys_ns=.. count=.. finished=.. peak_rss_kib=..

CPU time is the whole process's (paho's network thread included). The SDK's rate limiter is
off for hosts other than ThingsBoard Cloud; `--inflight` is accepted for a uniform command
line and ignored (the SDK sets its own window).
"""

import argparse
import logging
import resource
import sys
import time

logging.basicConfig(stream=sys.stderr, level=logging.WARNING)

from tb_gateway_mqtt import TBGatewayMqttClient  # noqa: E402

DEVICES = 1000
TS0 = 1_700_000_000_000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--inflight", type=int, default=0)
    args = parser.parse_args()

    client = TBGatewayMqttClient("127.0.0.1", port=args.port, username="BENCH_TOKEN",
                                 client_id="bench-python-sdk")
    client.connect()
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            sys.exit("not connected after 10 s")
        time.sleep(0.01)

    start_ns = time.time_ns()
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    cpu0 = time.process_time_ns()
    last = None
    for i in range(args.count):
        last = client.gw_send_telemetry(
            f"Device {i % DEVICES}",
            {"ts": TS0 + i, "values": {"temperature": 23.5, "humidity": 61}},
            quality_of_service=args.qos,
        )
    finished = 0
    if last is not None:
        infos = last.message_info if isinstance(last.message_info, list) else [last.message_info]
        for info in infos:
            info.wait_for_publish(timeout=120)
        finished = args.count if all(info.is_published() for info in infos) else 0
    end_ns = time.time_ns()
    cpu_ns = time.process_time_ns() - cpu0
    sys_ns = int((resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0) * 1e9)
    client.disconnect()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"RESULT start_ns={start_ns} end_ns={end_ns} cpu_ns={cpu_ns} sys_ns={sys_ns} count={args.count} "
          f"finished={finished} peak_rss_kib={rss}", flush=True)


if __name__ == "__main__":
    main()
