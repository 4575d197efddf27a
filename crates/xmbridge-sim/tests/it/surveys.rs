//! End to end over loopback HTTP: identity, envelopes, surveys, survey definitions and single
//! responses of the simulated Qualtrics API.

use reqwest::StatusCode;
use serde_json::Value;
use xmbridge_sim::qualtrics::responses::encode_response_id;
use xmbridge_sim::{SimConfig, SimHandle};

async fn sim(cfg: SimConfig) -> SimHandle {
    xmbridge_test_kit::sim::qualtrics(cfg).await
}

fn small() -> SimConfig {
    SimConfig {
        surveys: 3,
        responses: 50,
        ..SimConfig::default()
    }
}

async fn get(h: &SimHandle, path: &str) -> (StatusCode, Value) {
    get_as(h, path, &h.sim.cfg.admin_token()).await
}

async fn get_as(h: &SimHandle, path: &str, token: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{}", h.api_url(), path))
        .header("X-API-TOKEN", token)
        .send()
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap())
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn whoami_has_the_contract_shape() {
    let h = sim(small()).await;
    let (s, v) = get(&h, "/whoami").await;
    assert_eq!(s, 200);
    assert_eq!(
        keys(&v["result"]),
        [
            "accountType",
            "brandId",
            "datacenter",
            "email",
            "firstName",
            "lastName",
            "userId",
            "userName"
        ]
    );
    assert_eq!(v["result"]["accountType"], "UT_BRANDADMIN");
    assert_eq!(v["result"]["datacenter"], "fra1");
    assert_eq!(v["meta"]["httpStatus"], "200 - OK");
    assert_eq!(v["meta"]["requestId"].as_str().unwrap().len(), 36);
    assert!(v["result"]["userId"].as_str().unwrap().starts_with("UR_"));
    assert_eq!(v["result"]["userId"].as_str().unwrap().len(), 18);
}

#[tokio::test]
async fn auth_errors_use_the_error_envelope() {
    let h = sim(small()).await;
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{}/whoami", h.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["meta"]["httpStatus"], "401 - Unauthorized");
    assert!(
        v["meta"]["error"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("X-API-TOKEN")
    );
    assert!(v.get("result").is_none());

    let (s, v) = get_as(&h, "/whoami", "wrong-token").await;
    assert_eq!(s, 401);
    assert!(v["meta"]["error"]["errorCode"].is_string());

    // The user without the "Access API" permission is refused everywhere.
    let noapi = h.sim.users.read()[3].api_token.clone();
    let (s, v) = get_as(&h, "/surveys", &noapi).await;
    assert_eq!(s, 403);
    assert_eq!(v["meta"]["httpStatus"], "403 - Forbidden");
    assert!(
        v["meta"]["error"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Access API")
    );
}

#[tokio::test]
async fn unknown_routes_and_trailing_slashes() {
    let h = sim(small()).await;
    let (s, v) = get(&h, "/no/such/thing").await;
    assert_eq!(s, 404);
    assert_eq!(
        v["meta"]["error"]["errorMessage"],
        "API call does not exist: GET /API/v3/no/such/thing"
    );
    let (s, _) = get(&h, "/whoami/").await;
    assert_eq!(s, 200);
    let sid = h.sim.surveys[0].id.clone();
    let (s, v) = get(&h, &format!("/surveys/{sid}/")).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = get(&h, "/surveys/SV_doesnotexist123").await;
    assert_eq!(s, 404);
    assert_eq!(v["meta"]["httpStatus"], "404 - Not Found");
}

#[tokio::test]
async fn survey_list_pages_to_the_last_page_with_full_urls() {
    let h = sim(SimConfig {
        surveys: 250,
        responses: 5,
        ..SimConfig::default()
    })
    .await;
    let c = reqwest::Client::new();
    let mut url = format!("{}/surveys", h.api_url());
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let v: Value = c
            .get(&url)
            .header("X-API-TOKEN", h.sim.cfg.admin_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for e in v["result"]["elements"].as_array().unwrap() {
            assert_eq!(
                keys(e),
                [
                    "creationDate",
                    "id",
                    "isActive",
                    "lastModified",
                    "name",
                    "ownerId"
                ]
            );
            seen.push(e["id"].as_str().unwrap().to_string());
        }
        match v["result"]["nextPage"].as_str() {
            Some(next) => {
                assert!(next.starts_with(&h.api_url()), "{next}");
                assert!(next.contains("offset="));
                url = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 250, "ids are unique");
}

#[tokio::test]
async fn legacy_survey_shape() {
    let h = sim(small()).await;
    let sid = h.sim.surveys[1].id.clone();
    let (s, v) = get(&h, &format!("/surveys/{sid}")).await;
    assert_eq!(s, 200);
    let r = &v["result"];
    assert_eq!(
        keys(r),
        [
            "blocks",
            "comments",
            "creationDate",
            "embeddedData",
            "expiration",
            "exportColumnMap",
            "flow",
            "id",
            "isActive",
            "lastModifiedDate",
            "loopAndMerge",
            "name",
            "organizationId",
            "ownerId",
            "questions",
            "responseCounts"
        ]
    );
    assert_eq!(r["responseCounts"]["auditable"], 50);
    assert_eq!(r["questions"]["QID1"]["questionType"]["type"], "MC");
    assert_eq!(r["exportColumnMap"]["Q1"]["question"], "QID1");
    assert_eq!(
        r["exportColumnMap"]["Q3_2"]["subQuestion"],
        "QID3.subQuestions.2"
    );
    // Trashed questions are omitted from the legacy shape.
    let trashed = h.sim.surveys[1]
        .questions
        .iter()
        .find(|q| q.trashed)
        .unwrap();
    assert!(r["questions"].get(&trashed.qid).is_none());
    assert!(r["embeddedData"][0]["name"].is_string());
}

#[tokio::test]
async fn survey_definition_matches_the_contract() {
    let h = sim(small()).await;
    let s = &h.sim.surveys[0];
    let (st, v) = get(&h, &format!("/survey-definitions/{}", s.id)).await;
    assert_eq!(st, 200);
    let d = &v["result"];
    for k in [
        "QuestionCount",
        "SurveyOptions",
        "SurveyID",
        "SurveyName",
        "SurveyStatus",
        "LastModified",
        "BrandID",
        "OwnerID",
        "CreatorID",
        "LastAccessed",
        "LastActivated",
        "Questions",
        "Blocks",
        "ResponseSets",
        "SurveyFlow",
        "Scoring",
        "ProjectInfo",
        "BrandBaseURL",
    ] {
        assert!(d.get(k).is_some(), "missing {k}");
    }
    assert!(d.get("Flow").is_none() && d.get("EmbeddedData").is_none());
    assert!(d["QuestionCount"].is_string());
    assert_eq!(d["SurveyFlow"]["Type"], "Root");
    let ed = d["SurveyFlow"]["Flow"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["Type"] == "EmbeddedData")
        .unwrap();
    assert_eq!(
        keys(&ed["EmbeddedData"][0]),
        [
            "AnalyzeText",
            "DataVisibility",
            "Description",
            "Field",
            "Type",
            "Value",
            "VariableType"
        ]
    );
    // Every kind of question the issue asks for is there.
    let q = d["Questions"].as_object().unwrap();
    let kinds: Vec<(String, String)> = q
        .values()
        .map(|x| {
            (
                x["QuestionType"].as_str().unwrap().to_string(),
                x["Selector"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("MC", "SAVR"),
        ("MC", "MAVR"),
        ("Matrix", "Likert"),
        ("TE", "SL"),
        ("TE", "FORM"),
        ("Slider", "HSLIDER"),
        ("MC", "NPS"),
        ("RO", "DND"),
        ("SBS", "SBSMatrix"),
    ] {
        assert!(
            kinds.contains(&(want.0.into(), want.1.into())),
            "missing {want:?}"
        );
    }
    let matrix = q.values().find(|x| x["QuestionType"] == "Matrix").unwrap();
    assert!(matrix["Answers"].is_object() && matrix["AnswerOrder"].is_array());
    // Trash block and its question are present here; page breaks spelled "Page Break".
    let blocks = d["Blocks"].as_object().unwrap();
    assert!(blocks.values().any(|b| b["Type"] == "Trash"));
    assert!(blocks.values().any(|b| b["Options"]["Looping"] == "Static"));
    assert!(blocks.values().any(|b| {
        b["BlockElements"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["Type"] == "Page Break")
    }));
    assert!(
        s.questions
            .iter()
            .filter(|q| q.trashed)
            .all(|t| q.contains_key(&t.qid))
    );

    let (_, v) = get(&h, &format!("/survey-definitions/{}/versions", s.id)).await;
    let versions = v["result"]["elements"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(
        keys(&versions[0]),
        [
            "creationDate",
            "description",
            "published",
            "surveyID",
            "userID",
            "versionID",
            "versionNumber",
            "wasPublished"
        ]
    );
    let vid = versions[2]["versionID"].as_str().unwrap();
    let (st, v) = get(&h, &format!("/survey-definitions/{}/versions/{vid}", s.id)).await;
    assert_eq!(st, 200);
    assert_eq!(v["result"]["surveyDefinition"]["SurveyID"], s.id.as_str());

    let (_, v) = get(&h, &format!("/survey-definitions/{}/quotas", s.id)).await;
    let quota = &v["result"]["elements"][0];
    for k in [
        "ID",
        "Name",
        "Occurrences",
        "Count",
        "CountForUndo",
        "LogicType",
        "QuotaAction",
        "QuotaRealm",
        "PerformActionOnUser",
    ] {
        assert!(quota.get(k).is_some(), "quota lacks {k}");
    }
    let (_, v) = get(&h, &format!("/survey-definitions/{}/quotagroups", s.id)).await;
    assert_eq!(
        v["result"]["elements"][0]["Quotas"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (_, v) = get(&h, &format!("/surveys/{}/quotas", s.id)).await;
    assert_eq!(
        keys(&v["result"]["elements"][0]),
        ["combinations", "count", "id", "logicType", "name", "quota"]
    );
}

#[tokio::test]
async fn same_seed_same_bytes() {
    let a = sim(small()).await;
    let b = sim(small()).await;
    let c = sim(SimConfig { seed: 8, ..small() }).await;
    let fetch = |h: &SimHandle, path: String| {
        let url = format!("{}{}", h.api_url(), path);
        let token = h.sim.cfg.admin_token();
        async move {
            reqwest::Client::new()
                .get(url)
                .header("X-API-TOKEN", token)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    };
    for (x, y) in [(&a, &b)] {
        let sx = format!("/survey-definitions/{}", x.sim.surveys[2].id);
        assert_eq!(fetch(x, sx.clone()).await, fetch(y, sx).await);
        let rid = encode_response_id(7, 0, 17);
        let p = format!("/surveys/{}/responses/{rid}", x.sim.surveys[0].id);
        assert_eq!(fetch(x, p.clone()).await, fetch(y, p).await);
    }
    assert_ne!(a.sim.surveys[0].id, c.sim.surveys[0].id);
}

#[tokio::test]
async fn proxied_notice_on_another_data_center() {
    let h = sim(small()).await;
    let c = reqwest::Client::new();
    let v: Value = c
        .get(format!("{}/whoami", h.api_url()))
        .header("Host", "iad1.qualtrics.com")
        .header("X-API-TOKEN", h.sim.cfg.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["meta"]["notice"],
        "Request proxied. For faster response times, use this host instead: fra1.qualtrics.com"
    );
    let v: Value = c
        .get(format!("{}/whoami", h.api_url()))
        .header("Host", "acme.fra1.qualtrics.com")
        .header("X-API-TOKEN", h.sim.cfg.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["meta"].get("notice").is_none());
}

#[tokio::test]
async fn single_response_lifecycle() {
    let h = sim(small()).await;
    let s = h.sim.surveys[0].clone();
    let c = reqwest::Client::new();
    let token = h.sim.cfg.admin_token();

    // A seeded response.
    let rid = encode_response_id(h.sim.cfg.seed, 0, 3);
    let (st, v) = get(&h, &format!("/surveys/{}/responses/{rid}", s.id)).await;
    assert_eq!(st, 200);
    let r = &v["result"];
    assert_eq!(
        keys(r),
        [
            "displayedFields",
            "displayedValues",
            "labels",
            "responseId",
            "values"
        ]
    );
    assert_eq!(r["values"]["_recordId"], rid.as_str());
    for k in [
        "startDate",
        "endDate",
        "status",
        "ipAddress",
        "progress",
        "duration",
        "finished",
        "recordedDate",
    ] {
        assert!(r["values"].get(k).is_some(), "missing {k}");
    }
    assert!(r["values"]["status"].is_number() && r["values"]["locationLatitude"].is_string());

    // Create: 202 while processing, then readable.
    let url = format!("{}/surveys/{}/responses", h.api_url(), s.id);
    let v: Value = c
        .post(&url)
        .header("X-API-TOKEN", &token)
        .json(&serde_json::json!({"values": {"QID1": 1, "segment": "gold", "finished": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_id = v["result"]["responseId"].as_str().unwrap().to_string();
    assert!(new_id.starts_with("R_") && new_id.len() == 17);
    let (st, v) = get(&h, &format!("/surveys/{}/responses/{new_id}", s.id)).await;
    assert_eq!(st, 202);
    assert!(v["result"]["message"].is_string());
    h.sim.clock.advance(1000);
    let (st, v) = get(&h, &format!("/surveys/{}/responses/{new_id}", s.id)).await;
    assert_eq!(st, 200);
    assert_eq!(v["result"]["values"]["QID1"], 1);
    assert_eq!(v["result"]["values"]["segment"], "gold");

    // Bad bodies are 400 with the field named.
    let r = c
        .post(&url)
        .header("X-API-TOKEN", &token)
        .json(&serde_json::json!({"values": {"QID999": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["meta"]["error"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("QID999")
    );
    let r = c
        .post(&url)
        .header("X-API-TOKEN", &token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Update embedded data: recordedDate moves by 1 ms.
    let before = get(&h, &format!("/surveys/{}/responses/{rid}", s.id))
        .await
        .1;
    let r = c
        .put(format!("{}/responses/{rid}", h.api_url()))
        .header("X-API-TOKEN", &token)
        .json(&serde_json::json!({"surveyId": s.id, "embeddedData": {"segment": "9"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v.get("result").is_none());
    let after = get(&h, &format!("/surveys/{}/responses/{rid}", s.id))
        .await
        .1;
    assert_eq!(after["result"]["values"]["segment"], "9");
    let ms = |v: &Value| {
        xmbridge_sim::clock::parse_iso(v["result"]["values"]["recordedDate"].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(ms(&after), ms(&before) + 1);
    let r = c
        .put(format!("{}/responses/{rid}", h.api_url()))
        .header("X-API-TOKEN", &token)
        .json(&serde_json::json!({"surveyId": s.id, "values": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Delete, then 404; counts follow.
    let r = c
        .delete(format!(
            "{}/surveys/{}/responses/{rid}?decrementQuotas=true",
            h.api_url(),
            s.id
        ))
        .header("X-API-TOKEN", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, _) = get(&h, &format!("/surveys/{}/responses/{rid}", s.id)).await;
    assert_eq!(st, 404);
    let (_, v) = get(&h, &format!("/surveys/{}", s.id)).await;
    assert_eq!(v["result"]["responseCounts"]["auditable"], 50); // 50 seeded − 1 deleted + 1 created
    assert_eq!(v["result"]["responseCounts"]["deleted"], 1);
}

/// `SurveyOptions` carries every option a real survey definition carries, with the same JSON
/// types (the keys and types of a definition recorded from a real brand and published with the
/// ropensci/qualtRics test fixtures, `fetch_description.yml`), so a client that reads them is
/// not tested against a thinner shape than Qualtrics sends.
#[tokio::test]
async fn survey_options_have_the_recorded_keys_and_types() {
    let h = sim(small()).await;
    let s = &h.sim.surveys[0];
    let (_, v) = get(&h, &format!("/survey-definitions/{}", s.id)).await;
    let options = &v["result"]["SurveyOptions"];
    let wrong = xmbridge_test_kit::recorded::survey_options_mismatches(options);
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(
        options["SurveyCreationDate"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z') && d.contains('T')),
        "{options}"
    );
}
