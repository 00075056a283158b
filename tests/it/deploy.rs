//! The deployment files, parsed and held to what runq needs: `infra/` (Terraform, evaluated by a
//! small interpreter of the HCL it uses), `cloudbuild.yaml` and `infra/local/compose.yaml`, each
//! against `infra/runq.json` (the queues and schedules declared in code) and against each other.
//! Terraform can't download its providers here, so these tests are what checks the wiring: a
//! subscription aimed at the wrong worker, a missing dead-letter grant or a deploy before the
//! migration fails them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::{Block, Body};
use serde_json::{Value as Json, json};

/// The project number the evaluated Terraform sees (`data.google_project.this.number`).
const PROJECT_NUMBER: &str = "123456789012";
/// `var.project_id`, which has no default.
const PROJECT_ID: &str = "test-project";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `infra/runq.json`: what `runq infra export` prints.
fn runq_json() -> Json {
    serde_json::from_str(&read("infra/runq.json")).expect("infra/runq.json is JSON")
}

fn queues() -> Vec<Json> {
    runq_json()["queues"].as_array().expect("queues").clone()
}

fn s(v: &Json) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn int(v: &Json) -> i64 {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// Seconds of a `"600s"` duration.
fn secs(v: &Json) -> i64 {
    s(v).strip_suffix('s').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not a duration: {v}"))
}

/// A Cloud Run service's deterministic URL.
fn run_url(service: &str, region: &str) -> String {
    format!("https://{service}-{PROJECT_NUMBER}.{region}.run.app")
}

// ---- A small Terraform interpreter ---------------------------------------------------------

/// The Terraform of `infra/`, evaluated as far as it can be without providers: variables take
/// their defaults, locals and resource attributes are evaluated with HCL's expression rules,
/// and each resource instance gets an `id` naming its address (`google_pubsub_topic.queue[high]`),
/// so a reference to another resource can be followed.
struct Terraform {
    body: Body,
    vars: hcl::Map<String, hcl::Value>,
    locals: hcl::Map<String, hcl::Value>,
    resources: hcl::Map<String, hcl::Value>,
}

fn func_jsondecode(args: FuncArgs) -> Result<hcl::Value, String> {
    let text = args[0].as_str().ok_or("jsondecode: not a string")?;
    serde_json::from_str(text).map_err(|e| format!("jsondecode: {e}"))
}

fn func_file(args: FuncArgs) -> Result<hcl::Value, String> {
    let path = args[0].as_str().ok_or("file: not a string")?;
    std::fs::read_to_string(path).map(hcl::Value::from).map_err(|e| format!("file({path}): {e}"))
}

fn func_tostring(args: FuncArgs) -> Result<hcl::Value, String> {
    Ok(match &args[0] {
        hcl::Value::String(s) => hcl::Value::from(s.clone()),
        hcl::Value::Number(n) => hcl::Value::from(n.to_string()),
        hcl::Value::Bool(b) => hcl::Value::from(b.to_string()),
        other => return Err(format!("tostring: {other:?}")),
    })
}

fn func_merge(args: FuncArgs) -> Result<hcl::Value, String> {
    let mut out = hcl::Map::new();
    for arg in args.iter() {
        let obj = arg.as_object().ok_or("merge: not an object")?;
        out.extend(obj.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok(hcl::Value::Object(out))
}

fn func_replace(args: FuncArgs) -> Result<hcl::Value, String> {
    let (Some(s), Some(from), Some(to)) = (args[0].as_str(), args[1].as_str(), args[2].as_str()) else {
        return Err("replace: not strings".into());
    };
    Ok(hcl::Value::from(s.replace(from, to)))
}

fn func_toset(args: FuncArgs) -> Result<hcl::Value, String> {
    let mut items = args[0].as_array().ok_or("toset: not a list")?.clone();
    items.dedup();
    Ok(hcl::Value::Array(items))
}

fn to_json(v: hcl::Value) -> Json {
    serde_json::to_value(v).expect("HCL values are JSON")
}

impl Terraform {
    fn load() -> Self {
        let dir = root().join("infra");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("infra/")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "tf"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .tf files in infra/");
        let mut structures = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let body = hcl::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            structures.extend(body.into_inner());
        }
        let mut tf = Terraform {
            body: Body(structures),
            vars: hcl::Map::new(),
            locals: hcl::Map::new(),
            resources: hcl::Map::new(),
        };
        let vars: Vec<(String, hcl::Value)> = tf
            .blocks("variable")
            .map(|block| {
                let name = block.labels[0].as_str().to_owned();
                let value = match attr(&block.body, "default") {
                    Some(expr) => expr.evaluate(&Context::new()).unwrap_or_else(|e| panic!("var.{name}: {e}")),
                    None if name == "project_id" => hcl::Value::from(PROJECT_ID),
                    None => panic!("variable {name} has no default: give it one or a value in this test"),
                };
                (name, value)
            })
            .collect();
        tf.vars.extend(vars);
        // Evaluate until nothing new resolves: locals and resources refer to each other.
        for _ in 0..8 {
            let before = (tf.locals.len(), format!("{:?}", tf.resources));
            tf.resolve_pass();
            if (tf.locals.len(), format!("{:?}", tf.resources)) == before {
                break;
            }
        }
        tf
    }

    fn blocks<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
        self.body.blocks().filter(move |b| b.identifier.as_str() == kind)
    }

    fn context(&self) -> Context<'static> {
        let mut ctx = Context::new();
        ctx.declare_var("var", hcl::Value::Object(self.vars.clone()));
        ctx.declare_var("local", hcl::Value::Object(self.locals.clone()));
        let module = root().join("infra").to_string_lossy().into_owned();
        ctx.declare_var("path", hcl::Value::from_iter([("module", module)]));
        let project = hcl::Value::from_iter([("number", PROJECT_NUMBER), ("project_id", PROJECT_ID)]);
        let data = hcl::Value::from_iter([("google_project", hcl::Value::from_iter([("this", project)]))]);
        ctx.declare_var("data", data);
        for (kind, named) in &self.resources {
            ctx.declare_var(kind.as_str(), named.clone());
        }
        ctx.declare_func("jsondecode", FuncDef::builder().param(ParamType::String).build(func_jsondecode));
        ctx.declare_func("file", FuncDef::builder().param(ParamType::String).build(func_file));
        ctx.declare_func("tostring", FuncDef::builder().param(ParamType::Any).build(func_tostring));
        ctx.declare_func("merge", FuncDef::builder().variadic_param(ParamType::Any).build(func_merge));
        ctx.declare_func("toset", FuncDef::builder().param(ParamType::Any).build(func_toset));
        ctx.declare_func(
            "replace",
            FuncDef::builder().params([ParamType::String, ParamType::String, ParamType::String]).build(func_replace),
        );
        ctx
    }

    fn resolve_pass(&mut self) {
        let ctx = self.context();
        let mut locals = self.locals.clone();
        for block in self.blocks("locals") {
            for a in block.body.attributes() {
                if let Ok(v) = a.expr.evaluate(&ctx) {
                    locals.insert(a.key.to_string(), v);
                }
            }
        }
        let mut resources: hcl::Map<String, hcl::Value> = self.resources.clone();
        for block in self.blocks("resource") {
            let (kind, name) = (block.labels[0].as_str(), block.labels[1].as_str());
            let Some(instances) = instances(&block.body, &ctx) else { continue };
            let mut evaluated = hcl::Map::new();
            for (key, each) in &instances {
                let mut ctx = ctx.clone();
                if let Some(each) = each {
                    ctx.declare_var("each", each.clone());
                }
                let mut obj = hcl::Map::new();
                for a in block.body.attributes() {
                    if let Ok(v) = a.expr.evaluate(&ctx) {
                        obj.insert(a.key.to_string(), v);
                    }
                }
                let address = match key {
                    Some(k) => format!("{kind}.{name}[{k}]"),
                    None => format!("{kind}.{name}"),
                };
                obj.insert("id".into(), hcl::Value::from(address));
                if kind == "google_service_account"
                    && let Some(id) = obj.get("account_id").and_then(|v| v.as_str())
                {
                    let email = format!("{id}@{PROJECT_ID}.iam.gserviceaccount.com");
                    obj.insert("email".into(), hcl::Value::from(email));
                }
                if kind == "google_service_account"
                    && let Some(email) = obj.get("email").and_then(|v| v.as_str())
                {
                    let name = format!("projects/{PROJECT_ID}/serviceAccounts/{email}");
                    obj.insert("name".into(), hcl::Value::from(name));
                }
                if kind == "random_password" {
                    let result = format!("random-{name}-{}", key.clone().unwrap_or_default());
                    obj.insert("result".into(), hcl::Value::from(result));
                }
                if kind == "google_sql_database_instance"
                    && let (Some(n), Some(r)) = (obj.get("name"), self.vars.get("region"))
                {
                    let conn = format!("{PROJECT_ID}:{}:{}", r.as_str().unwrap(), n.as_str().unwrap());
                    obj.insert("connection_name".into(), hcl::Value::from(conn));
                }
                evaluated.insert(key.clone().unwrap_or_default(), hcl::Value::Object(obj));
            }
            let value = if instances.len() == 1 && instances[0].0.is_none() {
                evaluated.swap_remove("").unwrap()
            } else {
                hcl::Value::Object(evaluated)
            };
            let by_name = resources.entry(kind.to_owned()).or_insert_with(|| hcl::Value::Object(hcl::Map::new()));
            if let hcl::Value::Object(m) = by_name {
                m.insert(name.to_owned(), value);
            }
        }
        self.resources = resources;
        self.locals = locals;
    }

    fn resource(&self, kind: &str, name: &str) -> &Block {
        self.blocks("resource")
            .find(|b| b.labels[0].as_str() == kind && b.labels[1].as_str() == name)
            .unwrap_or_else(|| panic!("no resource {kind}.{name} in infra/"))
    }

    /// Every instance of a resource (`for_each` key, or "" without one), fully evaluated: nested
    /// blocks become lists of objects, `dynamic` blocks are expanded.
    fn instances(&self, kind: &str, name: &str) -> BTreeMap<String, Json> {
        let block = self.resource(kind, name);
        let ctx = self.context();
        let instances =
            instances(&block.body, &ctx).unwrap_or_else(|| panic!("{kind}.{name}: for_each doesn't evaluate"));
        instances
            .into_iter()
            .map(|(key, each)| {
                let mut ctx = ctx.clone();
                if let Some(each) = each {
                    ctx.declare_var("each", each);
                }
                let mut body = eval_body(&block.body, &ctx).unwrap_or_else(|e| panic!("{kind}.{name}[{key:?}]: {e}"));
                let address = match &key {
                    Some(k) => format!("{kind}.{name}[{k}]"),
                    None => format!("{kind}.{name}"),
                };
                body["id"] = json!(address);
                (key.unwrap_or_default(), body)
            })
            .collect()
    }

    /// The one instance of a resource without `for_each`.
    fn single(&self, kind: &str, name: &str) -> Json {
        let mut all = self.instances(kind, name);
        assert_eq!(all.len(), 1, "{kind}.{name} should have one instance");
        all.remove("").unwrap_or_else(|| panic!("{kind}.{name} should not use for_each"))
    }

    fn local(&self, name: &str) -> Json {
        to_json(self.locals.get(name).unwrap_or_else(|| panic!("local.{name} doesn't evaluate")).clone())
    }

    fn var(&self, name: &str) -> Json {
        to_json(self.vars[name].clone())
    }

    fn email(&self, role: &str) -> String {
        let accounts = self.instances("google_service_account", "runq");
        let account = accounts.get(role).unwrap_or_else(|| panic!("no service account for role {role}"));
        format!("{}@{PROJECT_ID}.iam.gserviceaccount.com", s(&account["account_id"]))
    }
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a hcl::Expression> {
    body.attributes().find(|a| a.key.as_str() == key).map(|a| &a.expr)
}

type Instances = Vec<(Option<String>, Option<hcl::Value>)>;

/// A resource's instances: `(key, each)` per `for_each` entry, or one without a key.
fn instances(body: &Body, ctx: &Context) -> Option<Instances> {
    let Some(expr) = attr(body, "for_each") else { return Some(vec![(None, None)]) };
    let items = expr.evaluate(ctx).ok()?;
    let pairs: Vec<(String, hcl::Value)> = match items {
        hcl::Value::Object(m) => m.into_iter().collect(),
        hcl::Value::Array(a) => a.into_iter().map(|v| (v.as_str().unwrap_or_default().to_owned(), v)).collect(),
        _ => return None,
    };
    Some(
        pairs
            .into_iter()
            .map(|(k, v)| {
                let each = hcl::Value::from_iter([("key", hcl::Value::from(k.clone())), ("value", v)]);
                (Some(k), Some(each))
            })
            .collect(),
    )
}

fn eval_body(body: &Body, ctx: &Context) -> Result<Json, String> {
    let mut out = serde_json::Map::new();
    for a in body.attributes() {
        if a.key.as_str() == "depends_on" {
            continue;
        }
        let v = a.expr.evaluate(ctx).map_err(|e| format!("{}: {e}", a.key))?;
        out.insert(a.key.to_string(), to_json(v));
    }
    for block in body.blocks() {
        match block.identifier.as_str() {
            "lifecycle" => {}
            "dynamic" => {
                let kind = block.labels[0].as_str().to_owned();
                let items = attr(&block.body, "for_each").ok_or("dynamic without for_each")?;
                let items = items.evaluate(ctx).map_err(|e| format!("dynamic {kind}: {e}"))?;
                let content = block.body.blocks().find(|b| b.identifier.as_str() == "content").ok_or("no content")?;
                let pairs: Vec<(hcl::Value, hcl::Value)> = match items {
                    hcl::Value::Object(m) => m.into_iter().map(|(k, v)| (hcl::Value::from(k), v)).collect(),
                    hcl::Value::Array(a) => {
                        a.into_iter().enumerate().map(|(i, v)| (hcl::Value::from(i as u64), v)).collect()
                    }
                    other => return Err(format!("dynamic {kind}: for_each is {other:?}")),
                };
                let list = out.entry(kind.clone()).or_insert_with(|| Json::Array(vec![]));
                for (key, value) in pairs {
                    let mut ctx = ctx.clone();
                    ctx.declare_var(kind.as_str(), hcl::Value::from_iter([("key", key), ("value", value)]));
                    list.as_array_mut().unwrap().push(eval_body(&content.body, &ctx)?);
                }
            }
            kind => {
                let v = eval_body(&block.body, ctx)?;
                out.entry(kind.to_owned()).or_insert_with(|| Json::Array(vec![])).as_array_mut().unwrap().push(v);
            }
        }
    }
    Ok(Json::Object(out))
}

/// The first nested block `name` of an evaluated resource.
fn first<'a>(v: &'a Json, name: &str) -> &'a Json {
    v[name].get(0).unwrap_or_else(|| panic!("no {name} block in {v}"))
}

/// A Cloud Run v2 container's plain env and secret env.
fn container_env(container: &Json) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut plain = BTreeMap::new();
    let mut secret = BTreeMap::new();
    for e in container["env"].as_array().cloned().unwrap_or_default() {
        let name = s(&e["name"]).to_owned();
        if let Some(v) = e.get("value") {
            plain.insert(name, s(v).to_owned());
        } else {
            let key_ref = first(first(&e, "value_source"), "secret_key_ref");
            assert_eq!(s(&key_ref["version"]), "latest", "{name}: pin secrets to `latest`, rotation adds versions");
            secret.insert(name, s(&key_ref["secret"]).to_owned());
        }
    }
    (plain, secret)
}

fn cloudsql_mounted(template: &Json, container: &Json, connection: &str, what: &str) {
    let volume = template["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v.get("cloud_sql_instance").is_some()))
        .unwrap_or_else(|| panic!("{what}: no Cloud SQL volume"));
    assert_eq!(first(volume, "cloud_sql_instance")["instances"], json!([connection]), "{what}");
    let mount = container["volume_mounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == volume["name"]))
        .unwrap_or_else(|| panic!("{what}: the Cloud SQL volume is not mounted"));
    assert_eq!(s(&mount["mount_path"]), "/cloudsql", "{what}: DATABASE_URL's socket is under /cloudsql");
}

// ---- runq.json ---------------------------------------------------------------------------------

#[test]
fn runq_json_names_what_the_code_publishes_to() {
    let doc = runq_json();
    let prefix = s(&doc["topic_prefix"]);
    // dispatch::PubSubSettings: topics `{prefix}-jobs-{priority}`, dead letters `{prefix}-jobs-dead`.
    assert_eq!(s(&doc["dead_letter_topic"]), format!("{prefix}-jobs-dead"));
    let names: BTreeSet<String> = queues().iter().map(|q| s(&q["name"]).to_owned()).collect();
    for priority in ["high", "medium", "low"] {
        assert!(names.contains(priority), "runq.json lacks the {priority} queue");
    }
    for q in queues() {
        assert_eq!(s(&q["topic"]), format!("{prefix}-jobs-{}", s(&q["name"])));
        let ack = int(&q["ack_deadline_seconds"]);
        assert!((10..=600).contains(&ack), "Pub/Sub ack deadlines are 10..=600 s");
        assert!(int(&q["timeout_seconds"]) >= ack, "{}: a worker's timeout must cover the ack deadline", q["name"]);
        assert!((5..=100).contains(&int(&q["max_delivery_attempts"])));
    }
    for schedule in doc["schedules"].as_array().expect("schedules") {
        assert_eq!(s(&schedule["path"]), format!("/internal/schedules/{}", s(&schedule["name"])));
        assert_eq!(s(&schedule["cron"]).split_whitespace().count(), 5, "Cloud Scheduler takes 5-field cron");
    }
}

// ---- Terraform ---------------------------------------------------------------------------------

#[test]
fn terraform_reads_runq_json_rather_than_repeating_it() {
    let tf = Terraform::load();
    assert_eq!(tf.local("runq"), runq_json(), "local.runq must be jsondecode(file(\"${{path.module}}/runq.json\"))");
    let text: String = std::fs::read_dir(root().join("infra"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tf"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for q in queues() {
        for key in ["topic", "subscription", "service"] {
            assert!(
                !text.contains(&format!("\"{}\"", s(&q[key]))),
                "{} is spelled out in infra/*.tf: take it from runq.json",
                q[key]
            );
        }
    }
}

#[test]
fn terraform_has_a_topic_and_a_push_subscription_per_queue_aimed_at_its_worker() {
    let tf = Terraform::load();
    let region = s(&tf.var("region")).to_owned();
    let topics = tf.instances("google_pubsub_topic", "queue");
    let subs = tf.instances("google_pubsub_subscription", "queue");
    let workers = tf.instances("google_cloud_run_v2_service", "worker");
    let invokers = tf.instances("google_cloud_run_v2_service_iam_member", "push_invokes_worker");
    let dead = tf.single("google_pubsub_topic", "dead");
    let push = tf.email("push");
    let names: BTreeSet<String> = queues().iter().map(|q| s(&q["name"]).to_owned()).collect();
    for (what, keys) in [("topics", &topics), ("subscriptions", &subs), ("worker services", &workers)] {
        assert_eq!(keys.keys().cloned().collect::<BTreeSet<_>>(), names, "{what} must be one per queue of runq.json");
    }
    let mut endpoints = BTreeSet::new();
    for q in queues() {
        let name = s(&q["name"]);
        let topic = &topics[name];
        assert_eq!(topic["name"], q["topic"]);

        let sub = &subs[name];
        assert_eq!(sub["name"], q["subscription"]);
        assert_eq!(
            sub["topic"],
            json!(format!("google_pubsub_topic.queue[{name}]")),
            "{name}: subscribed to another topic"
        );
        assert_eq!(int(&sub["ack_deadline_seconds"]), int(&q["ack_deadline_seconds"]));

        let worker = &workers[name];
        assert_eq!(worker["name"], q["service"]);
        let url = run_url(s(&worker["name"]), &region);
        let push_config = first(sub, "push_config");
        assert_eq!(s(&push_config["push_endpoint"]), format!("{url}/push"), "{name}: pushes to the wrong place");
        endpoints.insert(s(&push_config["push_endpoint"]).to_owned());
        let oidc = first(push_config, "oidc_token");
        assert_eq!(s(&oidc["audience"]), url, "{name}: the audience must be set, to the worker's URL");
        assert_eq!(s(&oidc["service_account_email"]), push);

        let retry = first(sub, "retry_policy");
        assert_eq!(secs(&retry["minimum_backoff"]), int(&q["min_backoff_seconds"]));
        assert_eq!(secs(&retry["maximum_backoff"]), int(&q["max_backoff_seconds"]));
        let dlp = first(sub, "dead_letter_policy");
        assert_eq!(dlp["dead_letter_topic"], dead["id"], "{name}: dead letters go to the dead-letter topic");
        assert_eq!(int(&dlp["max_delivery_attempts"]), int(&q["max_delivery_attempts"]));

        // The worker expects exactly those tokens, and only the push account may invoke it.
        let template = first(worker, "template");
        let container = first(template, "containers");
        let (env, secrets) = container_env(container);
        assert_eq!(env["RUNQ_PUSH_AUDIENCE"], url, "{name}: the worker's audience must equal the subscription's");
        assert_eq!(env["RUNQ_PUSH_SERVICE_ACCOUNTS"], push);
        assert_eq!(env["RUNQ_AUTO_MIGRATE"], "false");
        assert_eq!(
            container["args"],
            json!(["worker", "--queue", name]),
            "{name}: the service must serve its own queue"
        );
        assert!(secrets.contains_key("DATABASE_URL"));
        assert_eq!(s(&template["service_account"]), tf.email("worker"));
        assert!(secs(&template["timeout"]) >= int(&sub["ack_deadline_seconds"]), "{name}: timeout < ack deadline");
        assert_eq!(int(&template["max_instance_request_concurrency"]), int(&q["concurrency"]));
        assert_eq!(int(&first(template, "scaling")["max_instance_count"]), int(&q["max_instances"]));
        let limits = &first(container, "resources")["limits"];
        assert_eq!((&limits["cpu"], &limits["memory"]), (&q["cpu"], &q["memory"]));
        let connection = format!("{PROJECT_ID}:{region}:{}", s(&tf.var("sql_instance_name")));
        cloudsql_mounted(template, container, &connection, name);

        let invoker = &invokers[name];
        assert_eq!(invoker["name"], worker["name"]);
        assert_eq!(s(&invoker["role"]), "roles/run.invoker");
        assert_eq!(s(&invoker["member"]), format!("serviceAccount:{push}"));
    }
    assert_eq!(endpoints.len(), names.len(), "two subscriptions push to the same worker");
}

#[test]
fn terraform_dead_letters_reach_the_api() {
    let tf = Terraform::load();
    let region = s(&tf.var("region")).to_owned();
    let doc = runq_json();
    let dead = tf.single("google_pubsub_topic", "dead");
    assert_eq!(dead["name"], doc["dead_letter_topic"]);
    let agent = format!("serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com");

    // Pub/Sub's service agent publishes dead letters and acknowledges them at the source.
    let publishes = tf.blocks("resource").filter(|b| b.labels[0].as_str() == "google_pubsub_topic_iam_member");
    let agent_publishes = publishes
        .flat_map(|b| tf.instances("google_pubsub_topic_iam_member", b.labels[1].as_str()).into_values())
        .any(|m| m["topic"] == dead["id"] && s(&m["role"]) == "roles/pubsub.publisher" && s(&m["member"]) == agent);
    assert!(agent_publishes, "the Pub/Sub service agent needs roles/pubsub.publisher on the dead-letter topic");
    let subs = tf.instances("google_pubsub_subscription", "queue");
    let acks: Vec<Json> = tf
        .blocks("resource")
        .filter(|b| b.labels[0].as_str() == "google_pubsub_subscription_iam_member")
        .flat_map(|b| tf.instances("google_pubsub_subscription_iam_member", b.labels[1].as_str()).into_values())
        .collect();
    for name in subs.keys() {
        let id = json!(format!("google_pubsub_subscription.queue[{name}]"));
        assert!(
            acks.iter().any(|m| m["subscription"] == id
                && s(&m["role"]) == "roles/pubsub.subscriber"
                && s(&m["member"]) == agent),
            "the Pub/Sub service agent needs roles/pubsub.subscriber on {name}'s subscription"
        );
    }
    // Pub/Sub mints the push tokens of the push and dead-letter accounts.
    let token_creators: Vec<Json> =
        tf.instances("google_service_account_iam_member", "pubsub_signs").into_values().collect();
    for role in ["push", "dead_letter"] {
        let account = format!("projects/{PROJECT_ID}/serviceAccounts/{}", tf.email(role));
        assert!(
            token_creators.iter().any(|m| s(&m["service_account_id"]) == account
                && s(&m["role"]) == "roles/iam.serviceAccountTokenCreator"
                && s(&m["member"]) == agent),
            "the Pub/Sub service agent must be able to sign {role}'s push tokens"
        );
    }

    // The dead-letter topic pushes to the API's /internal/dead-letter with the dead-letter
    // account's token, and the API expects exactly that audience and account.
    let sub = tf.single("google_pubsub_subscription", "dead");
    assert_eq!(sub["topic"], dead["id"]);
    assert!(sub.get("dead_letter_policy").is_none(), "the dead-letter subscription can't dead-letter to itself");
    let api = tf.single("google_cloud_run_v2_service", "api");
    let api_url = run_url(s(&api["name"]), &region);
    let push_config = first(&sub, "push_config");
    assert_eq!(s(&push_config["push_endpoint"]), format!("{api_url}/internal/dead-letter"));
    let oidc = first(push_config, "oidc_token");
    let (env, _) = container_env(first(first(&api, "template"), "containers"));
    assert_eq!(
        env["RUNQ_DEAD_LETTER_AUDIENCE"],
        s(&oidc["audience"]),
        "the API must expect the dead-letter push's audience"
    );
    assert!(s(&oidc["audience"]).starts_with(&api_url));
    assert_eq!(s(&oidc["service_account_email"]), tf.email("dead_letter"));
    assert_eq!(env["RUNQ_DEAD_LETTER_SERVICE_ACCOUNTS"], tf.email("dead_letter"));
}

#[test]
fn terraform_scheduler_jobs_are_the_declared_schedules() {
    let tf = Terraform::load();
    let region = s(&tf.var("region")).to_owned();
    let jobs = tf.instances("google_cloud_scheduler_job", "schedule");
    let schedules = runq_json()["schedules"].as_array().unwrap().clone();
    let declared: BTreeSet<String> = schedules.iter().map(|x| s(&x["name"]).to_owned()).collect();
    assert_eq!(jobs.keys().cloned().collect::<BTreeSet<_>>(), declared, "one Scheduler job per declared schedule");
    let api = tf.single("google_cloud_run_v2_service", "api");
    let api_url = run_url(s(&api["name"]), &region);
    let (env, _) = container_env(first(first(&api, "template"), "containers"));
    let scheduler = tf.email("scheduler");
    let mut ids = BTreeSet::new();
    for schedule in &schedules {
        let job = &jobs[s(&schedule["name"])];
        let id = s(&job["name"]);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{id}: not a valid job id");
        assert!(ids.insert(id.to_owned()), "two schedules map to the job id {id}");
        assert_eq!(job["schedule"], schedule["cron"]);
        assert_eq!(job["time_zone"], schedule["time_zone"]);
        let target = first(job, "http_target");
        assert_eq!(s(&target["http_method"]), "POST");
        assert_eq!(s(&target["uri"]), format!("{api_url}{}", s(&schedule["path"])));
        let oidc = first(target, "oidc_token");
        assert_eq!(s(&oidc["service_account_email"]), scheduler);
        assert_eq!(
            s(&oidc["audience"]),
            env["RUNQ_SCHEDULER_AUDIENCE"],
            "the API must expect the Scheduler's audience"
        );
        assert_eq!(env["RUNQ_SCHEDULER_SERVICE_ACCOUNTS"], scheduler);
    }
}

#[test]
fn terraform_gives_each_role_its_own_account_and_the_api_what_it_needs() {
    let tf = Terraform::load();
    let region = s(&tf.var("region")).to_owned();
    let roles = ["api", "worker", "push", "scheduler", "dead_letter", "migrate"];
    let emails: BTreeSet<String> = roles.iter().map(|r| tf.email(r)).collect();
    assert_eq!(emails.len(), roles.len(), "one service account per role");

    let api = tf.single("google_cloud_run_v2_service", "api");
    let template = first(&api, "template");
    let container = first(template, "containers");
    assert_eq!(s(&template["service_account"]), tf.email("api"));
    assert_eq!(container["args"], json!(["api"]));
    let (env, secrets) = container_env(container);
    assert_eq!(env["RUNQ_AUTO_MIGRATE"], "false", "deployed services never migrate");
    assert_eq!(env["RUNQ_TOPIC_PREFIX"], s(&runq_json()["topic_prefix"]), "the API publishes to runq.json's topics");
    assert_eq!(env["RUNQ_PUBSUB_PROJECT"], PROJECT_ID);
    for secret in ["DATABASE_URL", "RUNQ_AUTH_HS256_SECRET", "RUNQ_AUTH_HS256_PREVIOUS_SECRET"] {
        assert!(secrets.contains_key(secret), "the API reads {secret} from Secret Manager");
    }
    let connection = format!("{PROJECT_ID}:{region}:{}", s(&tf.var("sql_instance_name")));
    cloudsql_mounted(template, container, &connection, "api");

    // Only the API publishes, to each queue topic.
    let publishers = tf.instances("google_pubsub_topic_iam_member", "api_publishes");
    for q in queues() {
        let p = &publishers[s(&q["name"])];
        assert_eq!(p["topic"], json!(format!("google_pubsub_topic.queue[{}]", s(&q["name"]))));
        assert_eq!(s(&p["member"]), format!("serviceAccount:{}", tf.email("api")));
    }

    // The migration job: `runq migrate` as the schema owner, on its own account and secret.
    let job = tf.single("google_cloud_run_v2_job", "migrate");
    let task = first(first(&job, "template"), "template");
    let container = first(task, "containers");
    assert_eq!(container["args"], json!(["migrate"]));
    assert_eq!(s(&task["service_account"]), tf.email("migrate"));
    let (_, job_secrets) = container_env(container);
    assert_ne!(
        job_secrets["DATABASE_URL"], secrets["DATABASE_URL"],
        "the services' database user can't change the schema"
    );
    cloudsql_mounted(task, container, &connection, "migrate");

    // Each secret is readable by the roles that use it, and the migrate URL by migrate alone.
    let readers: Vec<Json> = tf.instances("google_secret_manager_secret_iam_member", "reader").into_values().collect();
    let secret_key = tf
        .instances("google_secret_manager_secret", "runq")
        .into_iter()
        .find(|(_, x)| x["secret_id"] == json!(job_secrets["DATABASE_URL"]))
        .map(|(key, _)| key)
        .expect("the migrate secret is a google_secret_manager_secret.runq");
    let secret_address = json!(format!("google_secret_manager_secret.runq[{secret_key}]"));
    let migrate_readers: Vec<&Json> = readers.iter().filter(|r| r["secret_id"] == secret_address).collect();
    assert_eq!(migrate_readers.len(), 1);
    assert_eq!(s(&migrate_readers[0]["member"]), format!("serviceAccount:{}", tf.email("migrate")));
}

#[test]
fn terraform_and_cloudbuild_declare_the_job_that_runs_cloud_run_job_functions() {
    let tf = Terraform::load();
    let region = s(&tf.var("region")).to_owned();
    let job = tf.single("google_cloud_run_v2_job", "exec");
    let task = first(first(&job, "template"), "template");
    let container = first(task, "containers");
    assert_eq!(container["args"], json!(["exec"]), "the workers override the rest: exec --job-id J --claim-id C");
    assert_eq!(s(&task["service_account"]), tf.email("worker"), "an execution does what a worker's run does");
    assert_eq!(int(&task["max_retries"]), 0, "runq's attempts and the lease decide what runs again");
    assert_eq!(secs(&task["timeout"]), 86_400, "a Cloud Run Job function's hard limit may reach 24 h");
    let (env, secrets) = container_env(container);
    let worker = tf.instances("google_cloud_run_v2_service", "worker").remove("high").expect("the high worker");
    let (worker_env, worker_secrets) = container_env(first(first(&worker, "template"), "containers"));
    assert_eq!(secrets, worker_secrets, "the workers' database user");
    assert_eq!(env["RUNQ_RESULTS_BUCKET"], worker_env["RUNQ_RESULTS_BUCKET"]);
    let connection = format!("{PROJECT_ID}:{region}:{}", s(&tf.var("sql_instance_name")));
    cloudsql_mounted(task, container, &connection, "exec");
    // Every worker starts executions of this job, and may (on this job only).
    let name = format!("projects/{PROJECT_ID}/locations/{region}/jobs/{}", s(&job["name"]));
    for (queue, worker) in tf.instances("google_cloud_run_v2_service", "worker") {
        let (env, _) = container_env(first(first(&worker, "template"), "containers"));
        assert_eq!(env["RUNQ_EXEC_JOB"], name, "worker {queue}");
    }
    let grant = tf.single("google_cloud_run_v2_job_iam_member", "worker_runs_exec");
    assert_eq!((&grant["name"], &grant["location"]), (&job["name"], &job["location"]), "{grant}");
    assert_eq!(s(&grant["role"]), "roles/run.developer", "runWithOverrides");
    assert_eq!(s(&grant["member"]), format!("serviceAccount:{}", tf.email("worker")));

    // Cloud Build deploys it with each release's image, after the migration.
    let build = cloudbuild();
    let steps = build["steps"].as_array().unwrap();
    let step = steps
        .iter()
        .find(|st| step_args(st).starts_with(&["run".into(), "jobs".into(), "deploy".into(), s(&job["name"]).into()]))
        .expect("a step deploys the exec job");
    let args = step_args(step);
    assert_eq!(flag(&args, "--args").as_deref(), Some("exec"));
    assert_eq!(
        flag(&args, "--image").as_deref(),
        Some("${_REGION}-docker.pkg.dev/${PROJECT_ID}/${_REPOSITORY}/runq:${SHORT_SHA}")
    );
    assert_eq!(flag(&args, "--service-account").as_deref(), Some("runq-worker@${PROJECT_ID}.iam.gserviceaccount.com"));
    assert_eq!(pairs(&flag(&args, "--set-secrets").unwrap())["DATABASE_URL"], "runq-database-url:latest");
    assert_eq!(step["waitFor"], json!(["migrate"]));
}

// ---- cloudbuild.yaml ---------------------------------------------------------------------------

fn cloudbuild() -> Json {
    let doc: serde_norway::Value = serde_norway::from_str(&read("cloudbuild.yaml")).expect("cloudbuild.yaml is YAML");
    serde_json::to_value(doc).unwrap()
}

fn step_args(step: &Json) -> Vec<String> {
    step["args"].as_array().map(|a| a.iter().map(|x| s(x).to_owned()).collect()).unwrap_or_default()
}

/// The value of `--flag=value` in a gcloud command.
fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
}

/// `A=1,B=2` as a map.
fn pairs(list: &str) -> BTreeMap<String, String> {
    list.split(',')
        .map(|kv| kv.split_once('=').unwrap_or_else(|| panic!("{kv}: not NAME=value")))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Resolves Cloud Build's substitutions as a build in the Terraform's project would.
fn substitute(text: &str, subs: &BTreeMap<String, String>) -> String {
    let mut out = text.replace("${PROJECT_ID}", PROJECT_ID).replace("${PROJECT_NUMBER}", PROJECT_NUMBER);
    for (k, v) in subs {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    assert!(!out.contains("${_"), "{out}: an undeclared substitution");
    out
}

#[test]
fn cloudbuild_migrates_before_it_deploys_and_deploys_what_infra_declares() {
    let build = cloudbuild();
    let tf = Terraform::load();
    let subs: BTreeMap<String, String> = build["substitutions"]
        .as_object()
        .expect("substitutions")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect();
    for sub in ["_REGION", "_REPOSITORY"] {
        assert!(subs.contains_key(sub), "cloudbuild.yaml needs the substitution {sub}");
    }
    assert_eq!(subs["_REGION"], s(&tf.var("region")), "the default region differs from infra/'s");
    assert_eq!(subs["_REPOSITORY"], s(&tf.var("repository")));
    assert_eq!(subs["_SQL_INSTANCE"], s(&tf.var("sql_instance_name")));
    assert_eq!(subs["_DB_MAX_CONNECTIONS"], tf.var("db_max_connections").to_string());

    let steps = build["steps"].as_array().expect("steps").clone();
    let id = |i: usize| s(&steps[i]["id"]).to_owned();
    let is_gcloud = |i: usize, words: &[&str]| {
        let args = step_args(&steps[i]);
        args.len() >= words.len() && args.iter().zip(words).all(|(a, w)| a == w)
    };
    let image = "${_REGION}-docker.pkg.dev/${PROJECT_ID}/${_REPOSITORY}/runq:${SHORT_SHA}";
    let build_step =
        (0..steps.len()).find(|&i| step_args(&steps[i]).first().is_some_and(|a| a == "build")).expect("a docker build");
    assert!(step_args(&steps[build_step]).iter().any(|a| a.ends_with(image)), "the image is tagged with $SHORT_SHA");
    let push = (0..steps.len()).find(|&i| step_args(&steps[i]) == ["push", image]).expect("a docker push of the image");
    let migrate = (0..steps.len())
        .find(|&i| {
            is_gcloud(i, &["run", "jobs", "deploy", "runq-migrate"])
                || is_gcloud(i, &["run", "jobs", "execute", "runq-migrate"])
        })
        .expect("the migration job step");
    let margs = step_args(&steps[migrate]);
    assert!(margs.contains(&"--wait".to_owned()), "the build must wait for the migration to finish");
    if margs[2] == "deploy" {
        assert!(margs.contains(&"--execute-now".to_owned()));
        assert_eq!(flag(&margs, "--args").as_deref(), Some("migrate"));
        assert_eq!(flag(&margs, "--image").as_deref(), Some(image));
        assert_eq!(pairs(&flag(&margs, "--set-secrets").unwrap())["DATABASE_URL"], "runq-database-url-migrate:latest");
    }
    assert!(build_step < push && push < migrate, "build, push, then migrate");

    // Which steps a step waits for, transitively (no waitFor: every step before it).
    let ids: Vec<String> = (0..steps.len()).map(id).collect();
    fn waits(i: usize, steps: &[Json], ids: &[String]) -> BTreeSet<usize> {
        let direct: Vec<usize> = match steps[i]["waitFor"].as_array() {
            None => (0..i).collect(),
            Some(w) => {
                w.iter().filter(|x| s(x) != "-").map(|x| ids.iter().position(|id| id == s(x)).unwrap()).collect()
            }
        };
        let mut all = BTreeSet::new();
        for d in direct {
            all.insert(d);
            all.extend(waits(d, steps, ids));
        }
        all
    }

    let region = s(&tf.var("region")).to_owned();
    let deploys: Vec<usize> = (0..steps.len()).filter(|&i| is_gcloud(i, &["run", "deploy"])).collect();
    let mut deployed = BTreeMap::new();
    for &i in &deploys {
        assert!(waits(i, &steps, &ids).contains(&migrate), "{} may start before the migration finished", id(i));
        let args = step_args(&steps[i]);
        assert_eq!(flag(&args, "--image").as_deref(), Some(image), "{}: deploys another image", id(i));
        deployed.insert(args[2].clone(), args);
    }
    let sql = format!("{PROJECT_ID}:{region}:{}", s(&tf.var("sql_instance_name")));
    let check_env = |args: &[String], instance: &Json, what: &str| {
        let (env, secrets) = container_env(first(first(instance, "template"), "containers"));
        let set = pairs(&substitute(&flag(args, "--update-env-vars").expect("--update-env-vars"), &subs));
        let optional = ["RUNQ_CORS_ORIGINS", "RUNQ_AUTH_JWKS_URL", "RUNQ_AUTH_ISSUER", "RUNQ_AUTH_AUDIENCE"];
        let env: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| !optional.contains(&k.as_str())).collect();
        assert_eq!(set, env, "{what}: cloudbuild.yaml and infra/ set different environments");
        let secret_refs = pairs(&flag(args, "--update-secrets").expect("--update-secrets"));
        let expected: BTreeMap<String, String> = secrets.into_iter().map(|(k, v)| (k, format!("{v}:latest"))).collect();
        assert_eq!(secret_refs, expected, "{what}: cloudbuild.yaml and infra/ mount different secrets");
        assert_eq!(substitute(&flag(args, "--set-cloudsql-instances").unwrap(), &subs), sql, "{what}");
        let template = first(instance, "template");
        assert_eq!(
            substitute(&flag(args, "--service-account").unwrap(), &subs),
            s(&template["service_account"]),
            "{what}: another service account"
        );
    };

    let api = tf.single("google_cloud_run_v2_service", "api");
    let api_args = deployed.get(s(&api["name"])).expect("a deploy of the API");
    assert_eq!(flag(api_args, "--args").as_deref(), Some("api"));
    check_env(api_args, &api, "api");

    let workers = tf.instances("google_cloud_run_v2_service", "worker");
    for q in queues() {
        let name = s(&q["name"]);
        let service = s(&q["service"]);
        let args = deployed.get(service).unwrap_or_else(|| panic!("no deploy of {service}"));
        assert_eq!(flag(args, "--args"), Some(format!("worker,--queue={name}")), "{service} must serve queue {name}");
        assert!(args.contains(&"--no-allow-unauthenticated".to_owned()), "{service}: workers are not public");
        assert_eq!(int(&json!(flag(args, "--concurrency").unwrap())), int(&q["concurrency"]), "{service}");
        assert_eq!(int(&json!(flag(args, "--max-instances").unwrap())), int(&q["max_instances"]), "{service}");
        let timeout = int(&json!(flag(args, "--timeout").unwrap()));
        assert!(timeout >= int(&q["ack_deadline_seconds"]), "{service}: request timeout below the ack deadline");
        assert_eq!(flag(args, "--cpu").as_deref(), Some(s(&q["cpu"])));
        assert_eq!(flag(args, "--memory").as_deref(), Some(s(&q["memory"])));
        let env = pairs(&substitute(&flag(args, "--update-env-vars").unwrap(), &subs));
        assert_eq!(env["RUNQ_PUSH_AUDIENCE"], run_url(service, &region), "{service}: wrong push audience");
        check_env(args, &workers[name], service);
    }
    assert_eq!(deployed.len(), queues().len() + 1, "cloudbuild.yaml deploys a service infra/ doesn't declare");
}

// ---- compose.yaml ------------------------------------------------------------------------------

fn compose() -> Json {
    let doc: serde_norway::Value =
        serde_norway::from_str(&read("infra/local/compose.yaml")).expect("infra/local/compose.yaml is YAML");
    serde_json::to_value(doc).unwrap()
}

fn command(service: &Json) -> Vec<String> {
    service["command"].as_array().map(|a| a.iter().map(|x| s(x).to_owned()).collect()).unwrap_or_default()
}

fn env_of(service: &Json) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect())
        .unwrap_or_default()
}

/// `put PATH 'JSON'` lines of the init script: the topics and subscriptions it creates.
fn created(script: &str) -> BTreeMap<String, Json> {
    script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("put "))
        .map(|l| {
            let (path, body) = l.split_once(' ').expect("put PATH 'JSON'");
            let body = body.trim().trim_matches('\'');
            (path.to_owned(), serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}")))
        })
        .collect()
}

#[test]
fn compose_runs_postgres_an_emulator_and_runq_with_consistent_env() {
    let doc = compose();
    let services = doc["services"].as_object().expect("services");
    let runq_image = s(&services["api"]["image"]).to_owned();

    // Postgres, and every runq service pointed at its database.
    let pg = &services["postgres"];
    assert!(s(&pg["image"]).starts_with("postgres:"));
    let pg_env = env_of(pg);
    let database_url = format!(
        "postgres://{}:{}@postgres:5432/{}",
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"]
    );

    // The migration runs first; the services don't migrate, as in production.
    let migrate = &services["migrate"];
    assert_eq!(command(migrate), ["migrate"]);
    assert_eq!(env_of(migrate)["DATABASE_URL"], database_url);

    // The emulator, and Google's emulator image.
    let pubsub = &services["pubsub"];
    assert_eq!(s(&pubsub["image"]), runq_image);
    let cmd = command(pubsub);
    assert_eq!(cmd[0], "emulator");
    let host_port = &cmd[cmd.iter().position(|a| a == "--host-port").expect("--host-port") + 1];
    let port = host_port.rsplit_once(':').unwrap().1;
    let emulator = format!("pubsub:{port}");
    let jwks = format!("http://{emulator}/oauth2/v3/certs");
    let google = "gcr.io/google.com/cloudsdktool/google-cloud-cli:emulators";
    assert!(
        services.values().any(|svc| svc["image"] == json!(google)
            && command(svc).join(" ").contains("gcloud beta emulators pubsub start --host-port=0.0.0.0:8085")),
        "Google's emulator image, running its Pub/Sub emulator"
    );
    let init = &services["pubsub-init"];
    let script = command(init).join("\n");
    assert!(script.contains(&format!("http://{emulator}/v1/projects/")), "pubsub-init talks to another emulator");
    let created = created(&script);

    let api = &services["api"];
    let api_env = env_of(api);
    let project = &api_env["RUNQ_PUBSUB_PROJECT"];
    assert!(
        script.contains(&format!("http://{emulator}/v1/projects/{project}")),
        "pubsub-init creates another project"
    );
    assert_eq!(api_env["PUBSUB_EMULATOR_HOST"], emulator);
    assert_eq!(api_env["RUNQ_TOPIC_PREFIX"], s(&runq_json()["topic_prefix"]));
    assert_eq!(command(api), ["api"]);
    let mut runq_services = vec![("api".to_owned(), api)];

    let doc_json = runq_json();
    let dead_topic = format!("projects/{project}/topics/{}", s(&doc_json["dead_letter_topic"]));
    assert!(created.contains_key(&format!("topics/{}", s(&doc_json["dead_letter_topic"]))));
    for q in queues() {
        let name = s(&q["name"]);
        assert!(created.contains_key(&format!("topics/{}", s(&q["topic"]))), "no topic for {name}");
        let sub = created
            .get(&format!("subscriptions/{}", s(&q["subscription"])))
            .unwrap_or_else(|| panic!("no subscription for {name}"));
        assert_eq!(s(&sub["topic"]), format!("projects/{project}/topics/{}", s(&q["topic"])));
        assert_eq!(int(&sub["ackDeadlineSeconds"]), int(&q["ack_deadline_seconds"]));
        assert_eq!(s(&sub["deadLetterPolicy"]["deadLetterTopic"]), dead_topic);
        // The endpoint is a worker service of this file serving this queue, which expects the
        // subscription's audience and account.
        let endpoint = s(&sub["pushConfig"]["pushEndpoint"]);
        let host = endpoint.strip_prefix("http://").and_then(|r| r.split(':').next()).expect("http://HOST:PORT/push");
        let worker = services.get(host).unwrap_or_else(|| panic!("{endpoint}: no service {host}"));
        assert_eq!(command(worker), ["worker", "--queue", name], "{name}'s subscription pushes to {host}");
        let env = env_of(worker);
        assert_eq!(endpoint, format!("http://{host}:{}/push", env["PORT"]));
        let oidc = &sub["pushConfig"]["oidcToken"];
        assert_eq!(s(&oidc["audience"]), env["RUNQ_PUSH_AUDIENCE"], "{host} expects another audience");
        assert!(env["RUNQ_PUSH_SERVICE_ACCOUNTS"].split(',').any(|a| a == s(&oidc["serviceAccountEmail"])));
        runq_services.push((host.to_owned(), worker));
    }

    let dl = created.get("subscriptions/runq-dead-letter").expect("the dead-letter subscription");
    assert_eq!(s(&dl["topic"]), dead_topic);
    assert_eq!(s(&dl["pushConfig"]["pushEndpoint"]), format!("http://api:{}/internal/dead-letter", api_env["PORT"]));
    assert_eq!(s(&dl["pushConfig"]["oidcToken"]["audience"]), api_env["RUNQ_DEAD_LETTER_AUDIENCE"]);
    assert_eq!(s(&dl["pushConfig"]["oidcToken"]["serviceAccountEmail"]), api_env["RUNQ_DEAD_LETTER_SERVICE_ACCOUNTS"]);

    for (name, svc) in runq_services {
        let env = env_of(svc);
        assert_eq!(s(&svc["image"]), runq_image, "{name}");
        assert_eq!(env["DATABASE_URL"], database_url, "{name}: another database");
        assert_eq!(env["RUNQ_AUTO_MIGRATE"], "false", "{name}");
        assert_eq!(env["RUNQ_OIDC_JWKS_URL"], jwks, "{name} must verify the emulator's tokens");
        assert_eq!(
            svc["depends_on"]["migrate"]["condition"],
            json!("service_completed_successfully"),
            "{name} must start after the migration"
        );
    }
}

// ---- Dockerfile and CI -------------------------------------------------------------------------

#[test]
fn ci_tests_the_binary_the_dockerfile_builds() {
    let build = "cargo build --release --locked --bin runq";
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains(build), "the Dockerfile's build command changed: change .ci/run's too");
    let ci = read(".ci/run");
    assert!(ci.contains(build), ".ci/run must build the release binary the image ships");
    assert!(ci.contains("RUNQ_TEST_BIN="), ".ci/run must point the process tests at it");
    let runtime = dockerfile.lines().rev().find(|l| l.starts_with("FROM ")).unwrap();
    assert!(runtime.contains("distroless") && runtime.contains("nonroot"), "{runtime}");
    assert!(dockerfile.contains("ENTRYPOINT [\"/runq\"]"));
    for dir in ["Cargo.lock", "crates/pubsub-emulator", ".sqlx", "migrations", "src"] {
        assert!(
            dockerfile.contains(&format!("COPY {dir}")) || dockerfile.contains(&format!(" {dir} ")),
            "{dir} is not copied"
        );
    }
    let ignore = read(".dockerignore");
    for path in ["src/", ".sqlx/", "migrations/", "crates/pubsub-emulator/src/", "crates/pubsub-emulator/proto/"] {
        assert!(ignore.contains(&format!("!{path}")), ".dockerignore drops {path}");
    }
}
