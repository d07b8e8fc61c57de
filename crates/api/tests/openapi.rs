//! Checks that `openapi.json` (served at `GET /v1/openapi.json`) is a well-formed OpenAPI 3.1
//! document that describes exactly the routes the router serves.

use std::collections::BTreeSet;

use missive_api::OPENAPI;
use missive_api::routes::ROUTES;
use serde_json::Value;

/// The HTTP methods a path item may hold (OpenAPI 3.1, "Path Item Object").
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// The other fields a path item may hold.
const PATH_ITEM_FIELDS: &[&str] = &["$ref", "summary", "description", "servers", "parameters"];
/// The operations that need no bearer token.
const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/users"),
];

fn document() -> Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is not valid JSON")
}

/// One operation of the document.
struct Operation<'a> {
    method: String,
    path: &'a str,
    op: &'a Value,
}

impl Operation<'_> {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn responses(&self) -> &serde_json::Map<String, Value> {
        self.op
            .get("responses")
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("{} has no `responses` object", self.name()))
    }

    fn has_response(&self, code: &str) -> bool {
        self.responses().contains_key(code)
    }
}

fn operations(doc: &Value) -> Vec<Operation<'_>> {
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .expect("the document has no `paths` object");
    let mut out = Vec::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .unwrap_or_else(|| panic!("path item {path} is not an object"));
        for (key, op) in item {
            if METHODS.contains(&key.as_str()) {
                out.push(Operation {
                    method: key.to_uppercase(),
                    path,
                    op,
                });
            } else {
                assert!(
                    PATH_ITEM_FIELDS.contains(&key.as_str()) || key.starts_with("x-"),
                    "path item {path} has an unknown field {key:?} (a misspelt method?)"
                );
            }
        }
    }
    assert!(!out.is_empty(), "the document describes no operations");
    out
}

/// Follows a local `$ref` (`#/...`) to what it names.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// `value` itself, or what it names when it is a `{"$ref": ...}`.
fn deref<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r).unwrap_or_else(|| panic!("unresolved $ref {r}")),
        None => value,
    }
}

#[test]
fn the_document_is_json_and_openapi_3_1() {
    let doc = document();
    let version = doc
        .get("openapi")
        .and_then(Value::as_str)
        .expect("`openapi` is missing or not a string");
    assert!(version.starts_with("3.1"), "`openapi` is {version:?}");
    let info = doc.get("info").expect("`info` is missing");
    for field in ["title", "version", "description"] {
        assert!(
            info.get(field)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.trim().is_empty()),
            "`info.{field}` is missing or empty"
        );
    }
}

#[test]
fn the_paths_are_exactly_the_routes() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .iter()
        .map(|o| (o.method.clone(), o.path.to_owned()))
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(routed.len(), ROUTES.len(), "ROUTES lists a route twice");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "openapi.json documents operations that are not in ROUTES: {unrouted:?}"
    );
}

#[test]
fn every_operation_succeeds_somehow_and_authenticated_ones_list_401() {
    let doc = document();
    let schemes = doc
        .pointer("/components/securitySchemes")
        .and_then(Value::as_object)
        .expect("`components.securitySchemes` is missing");
    let global = doc
        .get("security")
        .and_then(Value::as_array)
        .expect("global `security` is missing");
    assert!(
        !global.is_empty(),
        "global `security` must require a scheme"
    );
    let mut public = BTreeSet::new();
    for o in operations(&doc) {
        // A WebSocket upgrade succeeds with 101 Switching Protocols.
        assert!(
            o.responses()
                .keys()
                .any(|code| code.starts_with('2') || code == "101"),
            "{} lists no 2xx (or 101) response",
            o.name()
        );
        let security = match o.op.get("security") {
            Some(s) => s
                .as_array()
                .unwrap_or_else(|| panic!("{}: `security` is not an array", o.name())),
            None => global,
        };
        for requirement in security {
            let requirement = requirement
                .as_object()
                .unwrap_or_else(|| panic!("{}: a security requirement is not an object", o.name()));
            for scheme in requirement.keys() {
                assert!(
                    schemes.contains_key(scheme),
                    "{}: unknown security scheme {scheme:?}",
                    o.name()
                );
            }
        }
        if security.is_empty() {
            public.insert((o.method.clone(), o.path.to_owned()));
        } else {
            assert!(
                o.has_response("401"),
                "{} needs a token but lists no 401",
                o.name()
            );
        }
    }
    let expected: BTreeSet<(String, String)> = PUBLIC
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        public, expected,
        "the operations documented without authentication"
    );
}

#[test]
fn every_ref_resolves_to_a_component() {
    fn walk(doc: &Value, value: &Value, at: &str, seen: &mut usize) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if key == "$ref" {
                        let r = v
                            .as_str()
                            .unwrap_or_else(|| panic!("{at}: `$ref` is not a string"));
                        assert!(
                            r.starts_with("#/components/"),
                            "{at}: $ref {r} does not name a component"
                        );
                        assert!(resolve(doc, r).is_some(), "{at}: $ref {r} does not resolve");
                        *seen += 1;
                    } else {
                        walk(doc, v, &format!("{at}/{key}"), seen);
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(doc, v, &format!("{at}/{i}"), seen);
                }
            }
            _ => {}
        }
    }
    let doc = document();
    let mut seen = 0;
    walk(&doc, &doc, "#", &mut seen);
    assert!(seen > 0, "the document uses no $ref at all");
}

#[test]
fn operations_with_a_body_list_400_413_415_and_others_list_neither_413_nor_415() {
    let doc = document();
    for o in operations(&doc) {
        match o.op.get("requestBody") {
            Some(body) => {
                let body = deref(&doc, body);
                assert!(
                    body.pointer("/content/application~1json/schema").is_some(),
                    "{}: the request body has no application/json schema",
                    o.name()
                );
                for code in ["400", "413", "415"] {
                    assert!(
                        o.has_response(code),
                        "{} takes a body but lists no {code}",
                        o.name()
                    );
                }
            }
            None => {
                for code in ["413", "415"] {
                    assert!(
                        !o.has_response(code),
                        "{} takes no body, so it cannot answer {code}",
                        o.name()
                    );
                }
            }
        }
    }
}

#[test]
fn every_response_is_described_and_every_path_parameter_is_declared() {
    let doc = document();
    for o in operations(&doc) {
        for (code, response) in o.responses() {
            let response = deref(&doc, response);
            assert!(
                response
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.trim().is_empty()),
                "{} {code} has no description",
                o.name()
            );
        }
        let in_template: BTreeSet<&str> = o
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let declared: BTreeSet<&str> =
            o.op.get("parameters")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| deref(&doc, p))
                .filter(|p| p.get("in").and_then(Value::as_str) == Some("path"))
                .map(|p| {
                    assert_eq!(
                        p.get("required"),
                        Some(&Value::Bool(true)),
                        "{}: path parameters must be required",
                        o.name()
                    );
                    p.get("name")
                        .and_then(Value::as_str)
                        .expect("parameter name")
                })
                .collect();
        assert_eq!(
            in_template,
            declared,
            "{}: path parameters in the template vs. declared",
            o.name()
        );
    }
}
