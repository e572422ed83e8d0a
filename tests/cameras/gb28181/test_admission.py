"""The registration state operators read (cameras/gb28181/admission.py), on a real PostgreSQL:
在线 while registered and unexpired; 注册过期 when the registration ran out while keepalives
still came (the device did not refresh its REGISTER); 离线 when keepalives stopped long before;
未注册 for an admitted device never registered (its last refusal named); channels as the catalog
says, 已退役 once they left it."""
from __future__ import annotations

from cameras.gb28181 import admission
from store.db import connect

ONLINE, EXPIRED, OFFLINE, NEVER = (f"5101991011132000090{i}" for i in range(4))


def test_registration_labels(site_db):
    with connect(site_db) as conn:
        rows = [
            (ONLINE, "registered", "now() + interval '1 hour'", "now()", "now()", None),
            (EXPIRED, "offline", "now() - interval '30 seconds'", "now() - interval '40 seconds'", "now() - interval '2 hours'", None),
            (OFFLINE, "offline", "now() + interval '50 minutes'", "now() - interval '10 minutes'", "now() - interval '11 minutes'", None),
            (NEVER, "refused", "NULL", "NULL", "NULL", "bad-password"),
        ]
        for dev, state, expires, keepalive, registered, refusal in rows:
            conn.execute(f"""INSERT INTO gb_devices (id, admitted, state, expires_at, last_keepalive, registered_at,
                                                     last_refusal)
                             VALUES (%s, true, %s, {expires}, {keepalive}, {registered}, %s)""", (dev, state, refusal))
        conn.execute("""INSERT INTO cameras (id, name, rtsp_url, active, origin)
                        VALUES ('gb-51019910111310000901', '一号', 'gb28181://x/y', true, 'gb28181'),
                               ('gb-51019910111310000902', '二号', 'gb28181://x/z', false, 'gb28181')""")
        conn.execute(f"""INSERT INTO gb_channels (device_id, channel_id, camera_id, name, status, retired_at) VALUES
                         ('{ONLINE}', '51019910111310000901', 'gb-51019910111310000901', '一号', 'ON', NULL),
                         ('{ONLINE}', '51019910111310000902', 'gb-51019910111310000902', '二号', 'ON', now())""")
        got = {d["id"]: d for d in admission.list_devices(conn, admitted=True)}
    assert {d: (got[d]["registration"], got[d]["registration_label"]) for d in (ONLINE, EXPIRED, OFFLINE, NEVER)} == {
        ONLINE: ("online", "在线"), EXPIRED: ("expired", "注册过期"), OFFLINE: ("offline", "离线"),
        NEVER: ("never", "未注册")}
    assert got[NEVER]["refusal_label"] == "密码错误"
    assert [(c["channel_id"][-3:], c["state_label"]) for c in got[ONLINE]["channels"]] == [("901", "在线"), ("902", "已退役")]
