#!/usr/bin/env bash
# Batch: plan, then estimate a height model and a quicklook for every GeoTIFF in a folder.
#
#   bash examples/survey.sh IN_FOLDER OUT_FOLDER [extra tiledepth run flags...]
#   bash examples/survey.sh flights/ heights/ --reference dem.tif     # in metres
#
# Runs offline with the example callable model; for real depth set MODEL to a Marigold hub id
# or checkpoint folder (MODEL=prs-eth/marigold-depth-v1-1). TILEDEPTH names the command
# (default: tiledepth). Writes OUT_FOLDER/<stem>.height.tif and .png; inputs already done
# are skipped, so a stopped survey resumes where it left off.
set -euo pipefail
in=${1:?usage: survey.sh IN_FOLDER OUT_FOLDER [tiledepth run flags...]}
out=${2:?usage: survey.sh IN_FOLDER OUT_FOLDER [tiledepth run flags...]}
shift 2
in=$(cd "$in" && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."          # so that examples.custom_model imports
model=${MODEL:-examples.custom_model:brightness_depth}
read -r -a td <<< "${TILEDEPTH:-tiledepth}"

shopt -s nullglob
for input in "$in"/*.tif; do
    stem=$(basename "${input%.tif}")
    output="$out/$stem.height.tif"
    if [[ -e "$output" ]]; then
        echo "skip $input (done)"
        continue
    fi
    "${td[@]}" info "$input" --model "$model" --tile-size 256 | grep -E "^(size|tile plan)"
    "${td[@]}" run "$input" -o "$output" --model "$model" --tile-size 256 \
        --output-kind height --preview --no-progress "$@"
done
