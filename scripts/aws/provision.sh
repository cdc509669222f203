#!/usr/bin/env bash
# Provision one device on AWS IoT Core with the AWS CLI (run on your workstation, not on the Pi):
#   bash scripts/aws/provision.sh THING_NAME REGION ACCOUNT_ID OUT_DIR
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
echo "download the root CA: AmazonRootCA1.pem from the AWS documentation into $out/"
echo "mqtt.host: $(aws iot describe-endpoint --region "$region" --endpoint-type iot:Data-ATS --query endpointAddress --output text)"
