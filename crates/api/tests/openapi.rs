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

/// The methods the rate limiter counts as commands, read from `is_command` in
/// `src/ratelimit.rs`: every operation with one of them can be refused with 429.
fn limited_methods() -> BTreeSet<String> {
    let source = include_str!("../src/ratelimit.rs");
    let body = source
        .split_once("fn is_command(")
        .expect("ratelimit.rs has `fn is_command`")
        .1;
    let list = body
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .expect("`is_command` checks a list of methods")
        .0;
    let methods: BTreeSet<String> = list
        .split(',')
        .map(|m| {
            m.trim()
                .strip_prefix("Method::")
                .unwrap_or_else(|| panic!("{m:?} in `is_command` is not a `Method::`"))
                .to_owned()
        })
        .collect();
    assert!(methods.contains("POST"), "`is_command`: {methods:?}");
    methods
}

/// The commands that name another user and answer 403 `recipient_unavailable` when that
/// user's account is blocked or deleted (`Service::check_reachable`).
const REACHING: &[(&str, &str)] = &[
    ("POST", "/v1/conversations/direct/{peer_id}/messages"),
    ("POST", "/v1/friends/{user_id}"),
    ("POST", "/v1/friends/{user_id}/accept"),
    ("POST", "/v1/servers/{server_id}/invitations"),
];
/// Queries that check the caller's account standing too: a blocked or deleted user opens no
/// WebSocket session.
const STANDING_CHECKED_QUERIES: &[(&str, &str)] = &[("GET", "/v1/ws")];
/// Operators' routes: their actions are not refused by the operator's own account standing.
const ADMIN_PREFIX: &str = "/v1/admin/";

/// The `error.code`s of the examples of a JSON answer (after following `$ref`s).
fn example_codes(doc: &Value, response: &Value) -> BTreeSet<String> {
    let response = deref(doc, response);
    response
        .pointer("/content/application~1json/examples")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, example)| {
            deref(doc, example)
                .pointer("/value/error/code")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("example {name} has no `value.error.code`"))
                .to_owned()
        })
        .collect()
}

/// The header `name` (any letter case) of an answer, after following `$ref`s.
fn header<'a>(doc: &'a Value, response: &'a Value, name: &str) -> Option<&'a Value> {
    deref(doc, response)
        .get("headers")?
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, h)| deref(doc, h))
}

fn is_authenticated(doc: &Value, o: &Operation) -> bool {
    let security = o.op.get("security").or_else(|| doc.get("security"));
    security
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty())
}

#[test]
fn every_command_can_be_rate_limited_and_no_query_is() {
    let doc = document();
    let limited = limited_methods();
    let mut commands = 0;
    for o in operations(&doc) {
        let rate_limited = o
            .responses()
            .get("429")
            .is_some_and(|r| example_codes(&doc, r).contains("rate_limited"));
        if !limited.contains(&o.method) {
            assert!(
                !rate_limited,
                "{}: queries are never rate limited, yet it documents 429 `rate_limited`",
                o.name()
            );
            continue;
        }
        commands += 1;
        let answer = o
            .responses()
            .get("429")
            .unwrap_or_else(|| panic!("{} is a command, so it can be refused with 429", o.name()));
        assert!(
            rate_limited,
            "{}: the 429 has no `rate_limited` example",
            o.name()
        );
        let description = deref(&doc, answer)["description"].as_str().unwrap_or("");
        assert!(
            description.contains("`rate_limited`"),
            "{}: the 429 does not describe `rate_limited`",
            o.name()
        );
        let retry_after = header(&doc, answer, "Retry-After")
            .unwrap_or_else(|| panic!("{}: the 429 has no Retry-After header", o.name()));
        assert_eq!(
            retry_after["required"],
            true,
            "{}: Retry-After is always sent with 429",
            o.name()
        );
        assert_eq!(retry_after["schema"]["type"], "integer", "{}", o.name());
        assert!(
            retry_after["schema"]["minimum"].as_u64() >= Some(1),
            "{}: Retry-After is at least 1 s",
            o.name()
        );
    }
    assert!(commands > 0, "the document has no command");
}

#[test]
fn authenticated_commands_list_the_403_account_codes_and_reaching_ones_recipient_unavailable() {
    let doc = document();
    let limited = limited_methods();
    let reaching: BTreeSet<(String, String)> = REACHING
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let mut checked = 0;
    for o in operations(&doc) {
        let key = (o.method.clone(), o.path.to_owned());
        let codes = o
            .responses()
            .get("403")
            .map(|r| example_codes(&doc, r))
            .unwrap_or_default();
        let description = o
            .responses()
            .get("403")
            .and_then(|r| deref(&doc, r)["description"].as_str())
            .unwrap_or("");
        let standing_checked = is_authenticated(&doc, &o)
            && !o.path.starts_with(ADMIN_PREFIX)
            && (limited.contains(&o.method)
                || STANDING_CHECKED_QUERIES.contains(&(o.method.as_str(), o.path)));
        for code in ["account_blocked", "account_deleted"] {
            let listed = codes.contains(code) && description.contains(&format!("`{code}`"));
            assert_eq!(
                listed,
                standing_checked,
                "{}: 403 `{code}` documented (example and description): {listed}, answered: \
                 {standing_checked}",
                o.name()
            );
        }
        let listed = codes.contains("recipient_unavailable")
            && description.contains("`recipient_unavailable`");
        assert_eq!(
            listed,
            reaching.contains(&key),
            "{}: 403 `recipient_unavailable` documented: {listed}",
            o.name()
        );
        checked += usize::from(standing_checked);
    }
    assert!(checked > REACHING.len(), "only {checked} commands checked");
}

#[test]
fn every_operation_takes_and_answers_x_request_id() {
    let doc = document();
    for o in operations(&doc) {
        let parameters =
            o.op.get("parameters")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
        let request_id: Vec<&Value> = parameters
            .iter()
            .map(|p| deref(&doc, p))
            .filter(|p| {
                p["in"] == "header"
                    && p["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(missive_api::REQUEST_ID))
            })
            .collect();
        assert_eq!(
            request_id.len(),
            1,
            "{}: the X-Request-Id header parameter, once",
            o.name()
        );
        let parameter = request_id[0];
        assert_ne!(
            parameter["required"],
            true,
            "{}: X-Request-Id is optional",
            o.name()
        );
        assert_eq!(parameter["schema"]["format"], "uuid", "{}", o.name());
        for (code, response) in o.responses() {
            let answered = header(&doc, response, missive_api::REQUEST_ID)
                .unwrap_or_else(|| panic!("{} {code} has no X-Request-Id header", o.name()));
            assert_eq!(
                answered["schema"]["format"],
                "uuid",
                "{} {code}: X-Request-Id is a UUID",
                o.name()
            );
        }
    }
}

/// The error codes the API answers: every string literal that follows a status code in the
/// crate's source (`ApiError::new(StatusCode::X, "code", ...)`, `(StatusCode::X, "code")`).
fn codes_in_source() -> BTreeSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut codes = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("a source file");
        for (at, _) in source.match_indices("StatusCode::") {
            let rest = &source[at + "StatusCode::".len()..];
            let rest = rest.trim_start_matches(|c: char| c.is_ascii_uppercase() || c == '_');
            let Some(rest) = rest.strip_prefix(',') else {
                continue;
            };
            let Some(rest) = rest.trim_start().strip_prefix('"') else {
                continue;
            };
            let code = rest.split('"').next().expect("a closing quote");
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}: {code:?} does not look like an error code",
                path.display()
            );
            codes.insert(code.to_owned());
        }
    }
    codes
}

#[test]
fn the_error_codes_listed_are_exactly_those_the_api_answers() {
    let doc = document();
    let description = doc
        .pointer("/components/schemas/Error/properties/error/properties/code/description")
        .and_then(Value::as_str)
        .expect("the Error schema describes `code`");
    let listed: BTreeSet<String> = description
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    let answered = codes_in_source();
    for code in [
        "invalid_request",
        "rate_limited",
        "account_blocked",
        "internal",
    ] {
        assert!(
            answered.contains(code),
            "the source scan missed {code:?}: {answered:?}"
        );
    }
    assert_eq!(
        listed, answered,
        "the codes of `Error.error.code` vs. the codes in the API's source"
    );
    let examples = doc
        .pointer("/components/examples")
        .and_then(Value::as_object)
        .expect("`components.examples`");
    for (name, example) in examples {
        if let Some(code) = example.pointer("/value/error/code").and_then(Value::as_str) {
            assert!(
                answered.contains(code),
                "example {name}: {code:?} is no code"
            );
        }
    }
}
