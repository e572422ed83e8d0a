"""Alerts: events become alarms by the site file's rules, alarms become cases of the shared
lifecycle (受理 → 立案 → 派遣 → 处置 → 反馈 → 核查 → 结案 → 评价) with SLA clocks, and cases
reach the external case systems through a transactional outbox.  See alerts/README.md.

Imports from config/, store/ and bus/ (shared ground), and devices/ (broadcasts are the devices
layer's: alerts asks, the devices worker sends and follows the receipts)."""
