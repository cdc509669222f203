#!/usr/bin/env bash
# Provision one device on AWS IoT Core with the AWS CLI (run on your workstation, not on the Pi):
#   [ALERT_EMAIL=carer@example.org] [ALERT_SMS=+4712345678] bash scripts/aws/provision.sh THING_NAME REGION ACCOUNT_ID OUT_DIR
# Creates the thing, a certificate and key (written to OUT_DIR), the policy from iot-policy.json with your
# region and account filled in, attaches them, and prints the endpoint for mqtt.host.
set -euo pipefail
thing="$1"; region="$2"; account="$3"; out="$4"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"; chmod 700 "$out"
aws iot create-thing --region "$region" --thing-name "$thing" >/dev/null
cert_arn=$(aws iot create-keys-and-certificate --region "$region" --set-as-active \
  --certificate-pem-outfile "$out/device.pem.crt" --private-key-outfile "$out/private.pem.key" \
  --query certificateArn --output text)
chmod 600 "$out/private.pem.key"
sed -e "s/REGION/$region/g" -e "s/ACCOUNT_ID/$account/g" "$here/iot-policy.json" > "$out/policy.json"
aws iot create-policy --region "$region" --policy-name "emotion-edge-$thing" \
  --policy-document "file://$out/policy.json" >/dev/null
aws iot attach-policy --region "$region" --policy-name "emotion-edge-$thing" --target "$cert_arn"
aws iot attach-thing-principal --region "$region" --thing-name "$thing" --principal "$cert_arn"
for stream in train infer; do
  sql=$(grep -i "FROM 'iotsensors/$stream'" "$here/rules.sql")
  echo "rule emotion_edge_$stream: $sql   (add its action, e.g. S3 or DynamoDB, in the console or CLI)"
done
# Alerts, as the seed did with SNS: one topic for every device's alerts and offline events, with an e-mail
# and/or SMS subscription from ALERT_EMAIL / ALERT_SMS (E.164, e.g. +4712345678); created once per account.
if [ -n "${ALERT_EMAIL:-}${ALERT_SMS:-}" ]; then
  fill() { sed -e "s/REGION/$region/g" -e "s/ACCOUNT_ID/$account/g" "$here/$1" > "$out/$1"; }
  for f in alert-rule.json offline-rule.json sns-role-trust.json sns-role-policy.json; do fill "$f"; done
  topic_arn=$(aws sns create-topic --region "$region" --name emotion-edge-alerts --query TopicArn --output text)
  [ -n "${ALERT_EMAIL:-}" ] && aws sns subscribe --region "$region" --topic-arn "$topic_arn" --protocol email \
    --notification-endpoint "$ALERT_EMAIL" >/dev/null && echo "confirm the subscription mailed to $ALERT_EMAIL"
  [ -n "${ALERT_SMS:-}" ] && aws sns subscribe --region "$region" --topic-arn "$topic_arn" --protocol sms \
    --notification-endpoint "$ALERT_SMS" >/dev/null
  aws iam get-role --role-name emotion-edge-iot-to-sns >/dev/null 2>&1 || \
    aws iam create-role --role-name emotion-edge-iot-to-sns \
      --assume-role-policy-document "file://$out/sns-role-trust.json" >/dev/null
  aws iam put-role-policy --role-name emotion-edge-iot-to-sns --policy-name publish-alerts \
    --policy-document "file://$out/sns-role-policy.json"
  for rule in alert offline; do
    aws iot get-topic-rule --region "$region" --rule-name "emotion_edge_$rule" >/dev/null 2>&1 || \
      aws iot create-topic-rule --region "$region" --rule-name "emotion_edge_$rule" \
        --topic-rule-payload "file://$out/$rule-rule.json"
  done
  echo "alerts: rules emotion_edge_alert and emotion_edge_offline publish to $topic_arn"
fi
echo "download the root CA: AmazonRootCA1.pem from the AWS documentation into $out/"
echo "mqtt.host: $(aws iot describe-endpoint --region "$region" --endpoint-type iot:Data-ATS --query endpointAddress --output text)"
