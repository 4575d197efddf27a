//! `xmbridge workflow …` end to end: the real binary, a temporary XMBRIDGE_HOME and project
//! directory, and (for `workflow test`) the Qualtrics simulator over loopback.

use serde_json::{Value, json};
use xmbridge_sim::{SimConfig, SimHandle};

use crate::support::{self, Install};

/// An installation acting as `alice`, run from a project directory of its own.
fn install() -> Install {
    support::install().user("alice").in_dir("project")
}

const DETRACTORS: &str = r#"
# Detractors become ServiceNow incidents.
[[workflow]]
name = "detractors"
owner = "alice"
condition = "response.values.QID1 <= 6"

[workflow.trigger]
type = "qualtrics-response"
survey_id = "SURVEY"

[[workflow.step]]
name = "incident"
action = "servicenow.create-incident"
account = "sn-prod"
[workflow.step.inputs]
short_description = "'Detractor (NPS {{ response.values.QID1 }}) on {{ survey.name }}'"
correlation_id = "response.id"
urgency = "'2'"
"#;

#[tokio::test]
async fn add_list_show_remove_from_file_and_template() {
    let i = install();
    let f = i.file("detractors.toml", &DETRACTORS.replace("SURVEY", "SV_abc"));
    i.run(&["workflow", "add", "--file", f.to_str().unwrap()])
        .await
        .expect(
            0,
            &["added workflow \"detractors\" (owner alice)", "1 step"],
        );
    assert!(i.home().join("workflows/detractors.toml").is_file());

    // Re-adding is an edit: refused without --replace, and a non-owner's edit is called out.
    i.run(&["workflow", "add", "--file", f.to_str().unwrap()])
        .await
        .expect(2, &["already exists", "pass --replace"]);
    // The same meaning saved again by bob changes nothing, so nothing is dropped.
    let same = i
        .run(&[
            "workflow",
            "add",
            "--file",
            f.to_str().unwrap(),
            "--replace",
            "--as",
            "bob",
        ])
        .await;
    same.expect(0, &["replaced workflow \"detractors\""]);
    assert!(!same.stdout().contains("binding"), "{}", same.stdout());
    let changed = i.file(
        "detractors-2.toml",
        &DETRACTORS
            .replace("SURVEY", "SV_abc")
            .replace("urgency = \"'2'\"", "urgency = \"'1'\""),
    );
    i.run(&[
        "workflow",
        "add",
        "--file",
        changed.to_str().unwrap(),
        "--replace",
        "--as",
        "bob",
    ])
    .await
    .expect(
        0,
        &[
            "replaced workflow \"detractors\"",
            "bob is not the owner (alice)",
            "xmbridge workflow resume detractors --reauthorize --as alice",
        ],
    );

    i.run(&[
        "workflow",
        "add",
        "--template",
        "salesforce-triggered-survey",
        "--name",
        "case-closed",
        "--set",
        "survey_id=SV_abc",
        "--set",
        "library_id=UR_1",
        "--set",
        "message_id=MS_1",
        "--set",
        "mailing_list_id=CG_1",
        "--set",
        "from_email=cx@acme.example",
        "--set",
        "from_name=Acme",
    ])
    .await
    .expect(
        0,
        &[
            "added workflow \"case-closed\"",
            "Salesforce outbound message on Case",
        ],
    );

    let r = i.run(&["workflow", "list", "--json"]).await;
    r.expect(0, &[]);
    let list: Value = serde_json::from_str(&r.stdout()).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["case-closed", "detractors"]);
    assert_eq!(
        list[0]["trigger"],
        json!({"type": "salesforce-outbound", "object": "Case", "organization_id": null})
    );
    assert_eq!(list[1]["steps"][0]["account"], json!("sn-prod"));
    i.run(&["workflow", "list"])
        .await
        .expect(0, &["NAME", "case-closed", "detractors"]);

    i.run(&["workflow", "show", "detractors"]).await.expect(
        0,
        &[
            "trigger:   Qualtrics event surveyengine.completedResponse.SV_abc (webhook)",
            "condition: response.values.QID1 <= 6",
            "# Detractors become ServiceNow incidents.",
        ],
    );
    i.run(&["workflow", "show", "detractor"])
        .await
        .expect(2, &["did you mean detractors?"]);

    i.run(&["workflow", "remove", "detractors"])
        .await
        .expect(0, &["removed workflow \"detractors\""]);
    assert!(!i.home().join("workflows/detractors.toml").exists());
    i.run(&["workflow", "remove", "detractors"])
        .await
        .expect(2, &["no workflow named \"detractors\""]);

    // Missing template parameters are listed.
    i.run(&["workflow", "add", "--template", "response-to-salesforce"])
        .await
        .expect(
            2,
            &[
                "missing parameters: survey_id",
                "salesforce_account",
                "servicenow_account",
            ],
        );
}

#[tokio::test]
async fn a_bad_file_exits_2_naming_file_workflow_step_and_field() {
    let i = install();
    let bad = DETRACTORS.replace("SURVEY", "SV_abc").replace(
        "urgency = \"'2'\"",
        "urgency = \"lenght(response.values.QID1)\"",
    );
    let f = i.file("nps.toml", &bad);
    i.run(&["workflow", "add", "--file", f.to_str().unwrap()]).await.expect(
        2,
        &[&format!(
            "{}: workflow \"detractors\", step \"incident\", input \"urgency\": unknown function lenght(); did you mean length()? (column 1)",
            f.display()
        )],
    );
    // The same file in ./workflows breaks every command that loads the catalog, with the path.
    i.file(
        "workflows/nps.toml",
        &bad.replace("servicenow.create-incident", "servicenow.create-incidnet"),
    );
    i.run(&["workflow", "list"]).await.expect(
        2,
        &[
            "workflows/nps.toml: workflow \"detractors\", step \"incident\", action: unknown action \"servicenow.create-incidnet\"; did you mean \"servicenow.create-incident\"? known actions: ",
        ],
    );
    // Duplicates across files name both.
    std::fs::write(
        i.work_dir().join("workflows/nps.toml"),
        DETRACTORS.replace("SURVEY", "SV_abc"),
    )
    .unwrap();
    i.file(
        "xmbridge.toml",
        &format!(
            "[other]\nkey = 1\n{}",
            DETRACTORS.replace("SURVEY", "SV_abc")
        ),
    );
    i.run(&["workflow", "list"]).await.expect(
        2,
        &["workflows/nps.toml: workflow \"detractors\": is also defined in xmbridge.toml"],
    );
}

async fn sim() -> SimHandle {
    let cfg = SimConfig {
        surveys: 1,
        responses: 5,
        ..SimConfig::default()
    };
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

/// Creates a finished response with `values` and lets the simulator finish processing it.
async fn create_response(h: &SimHandle, sid: &str, values: Value) -> String {
    let http = reqwest::Client::new();
    let token = h.sim.cfg.admin_token();
    let r: Value = http
        .post(format!("{}/API/v3/surveys/{sid}/responses", h.base_url))
        .header("X-API-TOKEN", &token)
        .json(&json!({ "values": values }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rid = r["result"]["responseId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    // A new response answers 202 for a moment of simulated time: move the clock past it.
    let ok = http
        .post(format!("{}/_sim/clock/advance", h.base_url))
        .json(&json!({"seconds": 5}))
        .send()
        .await
        .unwrap();
    assert!(ok.status().is_success());
    rid
}

async fn first_survey(h: &SimHandle) -> (String, String) {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/API/v3/surveys", h.base_url))
        .header("X-API-TOKEN", h.sim.cfg.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let s = &v["result"]["elements"][0];
    (
        s["id"].as_str().unwrap().to_string(),
        s["name"].as_str().unwrap().to_string(),
    )
}

fn describe(nps_updateable: bool) -> Value {
    json!({"Survey_Response__c": {
    "name": "Survey_Response__c", "createable": true, "updateable": true,
    "fields": [
        {"name": "Response_Id__c", "type": "string", "length": 40, "createable": true, "updateable": true, "nillable": true, "externalId": true},
        {"name": "Survey_Id__c", "type": "string", "length": 40, "createable": true, "updateable": true, "nillable": true},
        {"name": "NPS__c", "type": "double", "createable": true, "updateable": nps_updateable, "nillable": true},
        {"name": "Completed_At__c", "type": "datetime", "createable": true, "updateable": true, "nillable": true}
    ]}})
}

#[tokio::test]
async fn workflow_test_prints_the_payloads_for_a_simulated_response() {
    let h = sim().await;
    let i = install();
    let (sid, survey_name) = first_survey(&h).await;
    let rid = create_response(&h, &sid, json!({"QID1": 3})).await;

    let tf = i.file("token", &format!("{}\n", h.sim.cfg.admin_token()));
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "acme",
        "--no-test",
        "--url",
        &h.base_url,
        "--auth",
        "token",
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await
    .expect(0, &[]);

    let f = i.file("detractors.toml", &DETRACTORS.replace("SURVEY", &sid));
    i.run(&["workflow", "add", "--file", f.to_str().unwrap()])
        .await
        .expect(0, &[]);
    let r = i
        .run(&[
            "workflow",
            "test",
            "detractors",
            "--response",
            &rid,
            "--connection",
            "acme",
            "--json",
        ])
        .await;
    // The step names ServiceNow account sn-prod, which nobody linked: the delivery would fail,
    // so the test says so (exit 1), never a pass.
    r.expect(1, &[]);
    let out: Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(out["verdict"], json!("problems"));
    assert_eq!(out["passed"], json!(false));
    assert_eq!(
        out["report"]["steps"][0]["problems"][0]["message"],
        json!("no linked account named sn-prod (see `xmbridge account list`)")
    );
    assert_eq!(out["event"]["response"]["id"], json!(rid));
    let step = &out["report"]["steps"][0];
    assert_eq!(step["outcome"], json!("send"));
    assert_eq!(
        step["inputs"],
        json!({
            "short_description": format!("Detractor (NPS 3) on {survey_name}"),
            "correlation_id": rid,
            "urgency": "2",
        })
    );

    // The Salesforce template: both steps render; with a describe the permission check runs.
    i.run(&[
        "workflow",
        "add",
        "--template",
        "response-to-salesforce",
        "--set",
        &format!("survey_id={sid}"),
        "--set",
        "salesforce_account=sf-prod",
        "--set",
        "servicenow_account=sn-prod",
    ])
    .await
    .expect(0, &[]);
    let good = i.file("describe.json", &describe(true).to_string());
    i.run(&[
        "workflow",
        "test",
        "response-to-salesforce",
        "--response",
        &rid,
        "--connection",
        "acme",
        "--describe",
        good.to_str().unwrap(),
    ])
    .await
    .expect(
        1,
        &[
            "step 1 \"upsert\": salesforce.upsert with account sf-prod",
            &format!("\"external_id\": \"{rid}\""),
            "\"NPS__c\": 3",
            "step 2 \"incident\": servicenow.create-incident with account sn-prod",
            "no linked account named sn-prod",
            "preflight found 1 problem",
        ],
    );
    let bad = i.file("describe-bad.json", &describe(false).to_string());
    i.run(&[
        "workflow", "test", "response-to-salesforce", "--response", &rid, "--connection", "acme",
        "--describe", bad.to_str().unwrap(),
    ])
    .await
    .expect(
        1,
        &[
            "missing permission: the linked Salesforce user needs field Edit access on Survey_Response__c.NPS__c",
            "preflight found 2 problems",
        ],
    );

    // A promoter: the condition is false and nothing would be sent.
    let promoter = create_response(&h, &sid, json!({"QID1": 10})).await;
    i.run(&[
        "workflow",
        "test",
        "detractors",
        "--response",
        &promoter,
        "--connection",
        "acme",
    ])
    .await
    .expect(
        0,
        &[
            "condition: response.values.QID1 <= 6 → false",
            "skipped: the workflow's condition is false",
        ],
    );

    // An unknown response names it.
    i.run(&[
        "workflow",
        "test",
        "detractors",
        "--response",
        "R_doesnotexist123",
        "--connection",
        "acme",
    ])
    .await
    .expect(1, &["cannot fetch response R_doesnotexist123"]);
}

#[tokio::test]
async fn workflow_test_on_an_event_file() {
    let i = install();
    i.run(&[
        "workflow",
        "add",
        "--template",
        "upsert-contact",
        "--as",
        "carol",
    ])
    .await
    .expect(0, &["added workflow \"upsert-contact\" (owner carol)"]);
    let ev = i.file(
        "contact.json",
        &json!({"table": "customer_contact", "record": {"sys_id": "abc123", "email": "pat@example.com", "first_name": "Pat", "phone": "555"}}).to_string(),
    );
    let r = i
        .run(&[
            "workflow",
            "test",
            "upsert-contact",
            "--event-json",
            ev.to_str().unwrap(),
            "--json",
        ])
        .await;
    // carol linked no ServiceNow account, which its ServiceNow steps need: exit 1.
    r.expect(1, &[]);
    let out: Value = serde_json::from_str(&r.stdout()).unwrap();
    assert!(
        out["report"]["steps"][0]["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("user carol has no linked servicenow account"),
        "{out}"
    );
    let steps = &out["report"]["steps"];
    assert_eq!(
        steps[1]["inputs"],
        json!({"directory_id": "<output of step directory: value>", "email": "pat@example.com",
               "firstName": "Pat", "phone": "555", "extRef": "abc123"})
    );
    assert_eq!(
        steps[2]["inputs"],
        json!({"sys_id": "abc123", "table": "customer_contact",
               "fields": {"u_qualtrics_id": "<output of step contact: contactId>"}})
    );
    i.run(&["workflow", "test", "upsert-contact", "--response", "R_1"])
        .await
        .expect(2, &["give --event-json FILE"]);
}

#[tokio::test]
async fn workflow_test_checks_a_live_salesforce_describe() {
    let q = sim().await;
    let sf =
        xmbridge_test_kit::sim::salesforce(xmbridge_sim::salesforce::SalesforceConfig::default())
            .await;
    let i = install();
    let (sid, _) = first_survey(&q).await;
    let rid = create_response(&q, &sid, json!({"QID1": 2})).await;
    let tf = i.file("token", &format!("{}\n", q.sim.cfg.admin_token()));
    i.run(&[
        "connection",
        "add",
        "qualtrics",
        "acme",
        "--no-test",
        "--url",
        &q.base_url,
        "--auth",
        "token",
        "--api-token-file",
        tf.to_str().unwrap(),
    ])
    .await
    .expect(0, &[]);
    i.run(&[
        "workflow",
        "add",
        "--template",
        "response-to-salesforce",
        "--set",
        &format!("survey_id={sid}"),
        "--set",
        "salesforce_account=sf-prod",
        "--set",
        "servicenow_account=sn-prod",
    ])
    .await
    .expect(0, &[]);
    let creds: Value = reqwest::get(format!("{}/_sim/credentials", sf.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = i.file("sf-secret", creds["client_secret"].as_str().unwrap());
    let token_url = sf.token_url();
    let args = [
        "workflow",
        "test",
        "response-to-salesforce",
        "--response",
        &rid,
        "--connection",
        "acme",
        "--salesforce-token-url",
        &token_url,
        "--salesforce-client-id",
        creds["client_id"].as_str().unwrap(),
        "--salesforce-client-secret-file",
        secret.to_str().unwrap(),
    ];
    let r = i.run(&args).await;
    // The Salesforce step is checked live and fine; the ServiceNow step names an account nobody
    // linked, which a delivery would fail on.
    r.expect(
        1,
        &[
            "\"NPS__c\": 2",
            "checks: ok",
            "no linked account named sn-prod",
            "preflight found 1 problem",
        ],
    );
    assert!(
        !r.stdout().contains("not checked: Salesforce"),
        "{}",
        r.stdout()
    );
    // The secret never reaches the output.
    let all = format!("{}{}", r.stdout(), r.stderr());
    assert!(!all.contains(creds["client_secret"].as_str().unwrap()));
}
