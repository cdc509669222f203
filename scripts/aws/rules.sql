-- AWS IoT rules of the seed backend: one rule per stream (create each with `aws iot create-topic-rule`,
-- see provision.sh). Messages are flat JSON, so SELECT * hands every field to the action.
-- Rule emotion_edge_train: labelled per-second training records
SELECT * FROM 'iotsensors/train'
-- Rule emotion_edge_infer: detection windows for the cloud model
SELECT * FROM 'iotsensors/infer'
