-- AWS IoT rules of the seed backend: one rule per stream (create each with `aws iot create-topic-rule`,
-- see provision.sh). Messages are flat JSON, so SELECT * hands every field to the action.
-- Rule emotion_edge_train: labelled per-second training records
SELECT * FROM 'iotsensors/train'
-- Rule emotion_edge_infer: detection windows for the cloud model
SELECT * FROM 'iotsensors/infer'
-- Rule emotion_edge_alert: every alert a device raises, to the SNS topic (SMS and e-mail subscribers)
SELECT device_id, user, rule, message, timestamp, msg_id FROM 'iotsensors/+/alert'
-- Rule emotion_edge_offline: a device whose retained status turned offline (its last will, on a lost connection)
SELECT topic(2) AS device_id, state, reason, timestamp FROM 'iotsensors/+/status' WHERE state = 'offline'
