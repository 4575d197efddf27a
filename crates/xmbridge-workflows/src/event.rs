//! Inbound calls turned into outbox events: a Qualtrics event-subscription POST, a Salesforce
//! outbound message (SOAP) and a ServiceNow record call. It only parses and checks what arrived
//! (HMAC, organization id, shape) and builds [`NewEvent`]s with their dedupe keys; it does not
//! store anything (the outbox does) or call any API (Qualtrics events are enriched by the worker).

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha512;

use crate::store::{EventSource, NewEvent};

/// Why an inbound call was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventError {
    /// The `HMAC` field does not match the body under the subscription's shared key.
    #[error("the HMAC signature does not match the message (wrong shared key or altered body)")]
    BadSignature,
    /// A required part is missing or malformed.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// The part that is wrong (`MSG`, "SOAP message", "Notification", "ServiceNow record").
        what: &'static str,
        /// What is wrong with it, for the caller's error message.
        detail: String,
    },
    /// The Salesforce organization is not the one the hook accepts. Only what arrived is in the
    /// message: the expected id is what a forger would need.
    #[error("outbound message from organization {got}, which this hook does not accept")]
    WrongOrganization {
        /// The organization id the message carried.
        got: String,
    },
}

/// Payload key marking a Qualtrics event the worker has not yet enriched with the response.
pub const QUALTRICS_MSG: &str = "qualtrics_msg";

/// Verifies `hex(HMAC-SHA512(shared_key, msg))` in constant time.
pub fn verify_qualtrics_hmac(
    shared_key: &str,
    msg: &str,
    hmac_hex: &str,
) -> Result<(), EventError> {
    let given = hex::decode(hmac_hex.trim()).map_err(|_| EventError::BadSignature)?;
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(shared_key.as_bytes())
        .map_err(|_| EventError::BadSignature)?;
    mac.update(msg.as_bytes());
    mac.verify_slice(&given)
        .map_err(|_| EventError::BadSignature)
}

/// What a Qualtrics POST carried, once verified.
#[derive(Debug, Clone, PartialEq)]
pub enum QualtricsInbound {
    /// A completed response for the workflow's survey.
    Event(NewEvent),
    /// Signed correctly but for another survey or topic: answered 200 and ignored.
    Ignored(String),
}

/// Checks a Qualtrics event-subscription POST (`Topic`, `MSG`, `HMAC`) for `workflow`, which
/// listens to completed responses of `survey_id`.
pub fn qualtrics_event(
    workflow: &str,
    survey_id: &str,
    shared_key: &str,
    topic: &str,
    msg: &str,
    hmac_hex: &str,
) -> Result<QualtricsInbound, EventError> {
    verify_qualtrics_hmac(shared_key, msg, hmac_hex)?;
    let parsed: Value = serde_json::from_str(msg).map_err(|e| EventError::Malformed {
        what: "MSG",
        detail: e.to_string(),
    })?;
    let field = |k: &str| parsed.get(k).and_then(Value::as_str).unwrap_or_default();
    let expected_topic = format!("surveyengine.completedResponse.{survey_id}");
    // Qualtrics prefixes the topic with the brand id (`acme.surveyengine.completedResponse.SV_…`).
    let topic_ok = topic == expected_topic
        || topic
            .strip_suffix(&expected_topic)
            .is_some_and(|brand| brand.ends_with('.') && !brand[..brand.len() - 1].contains('.'));
    if !topic_ok || field("SurveyID") != survey_id {
        return Ok(QualtricsInbound::Ignored(format!(
            "topic {topic} (survey {}) is not {expected_topic}",
            field("SurveyID")
        )));
    }
    let response_id = field("ResponseID");
    if response_id.is_empty() {
        return Err(EventError::Malformed {
            what: "MSG",
            detail: "no ResponseID".into(),
        });
    }
    Ok(QualtricsInbound::Event(NewEvent {
        workflow: workflow.to_string(),
        source: EventSource::Qualtrics,
        dedupe_key: response_id.to_string(),
        payload: json!({ QUALTRICS_MSG: parsed, "topic": topic }),
    }))
}

/// A Qualtrics response seen by a sync (or a test): the event the worker enriches.
pub fn response_event(workflow: &str, survey_id: &str, response_id: &str) -> NewEvent {
    NewEvent {
        workflow: workflow.to_string(),
        source: EventSource::Sync,
        dedupe_key: response_id.to_string(),
        payload: json!({ QUALTRICS_MSG: {"SurveyID": survey_id, "ResponseID": response_id} }),
    }
}

/// A response written by `xmbridge sync`: the same payload a webhook gives the worker (which
/// fetches and enriches the response), deduplicated on response id + `lastModifiedDate`, so a
/// re-run of the same export adds nothing while a response changed in Qualtrics is a new event.
pub fn sync_response_event(
    workflow: &str,
    survey_id: &str,
    response_id: &str,
    last_modified: &str,
) -> NewEvent {
    NewEvent {
        dedupe_key: format!("{response_id}@{last_modified}"),
        ..response_event(workflow, survey_id, response_id)
    }
}

/// The parts of an outbound message the receiver needs.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    /// The sending Salesforce organization's id (`OrganizationId`), as it arrived.
    pub organization_id: String,
    /// The id of the workflow outbound-message action that sent it (`ActionId`; empty if absent).
    pub action_id: String,
    /// One event per `Notification`, in message order (1 to 100).
    pub events: Vec<NewEvent>,
}

/// Parses a Salesforce outbound message (SOAP 1.1) into one event per `Notification`,
/// deduplicated on the notification `Id`. `expected_org` is the organization id the hook accepts
/// (checked when known; Salesforce ids compare on their first 15 characters). Elements are
/// matched by local name (Salesforce's namespaces are not checked); a DTD is refused.
pub fn salesforce_outbound(
    workflow: &str,
    body: &str,
    expected_org: Option<&str>,
) -> Result<OutboundMessage, EventError> {
    let malformed = |what: &'static str, detail: String| EventError::Malformed { what, detail };
    let doc = roxmltree::Document::parse_with_options(
        body,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            // 100 notifications of a few dozen fields stay far below this.
            nodes_limit: 200_000,
            ..roxmltree::ParsingOptions::default()
        },
    )
    .map_err(|e| malformed("SOAP message", e.to_string()))?;
    let notifications = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "notifications")
        .ok_or_else(|| malformed("SOAP message", "no <notifications> element".into()))?;
    fn child<'a, 'i>(
        parent: roxmltree::Node<'a, 'i>,
        name: &str,
    ) -> Option<roxmltree::Node<'a, 'i>> {
        parent
            .children()
            .find(|c| c.is_element() && c.tag_name().name() == name)
    }
    fn text(node: Option<roxmltree::Node<'_, '_>>) -> String {
        node.and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    }
    fn attr(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
        node.attributes()
            .find(|a| a.name() == name)
            .map(|a| a.value().to_string())
    }
    let org = text(child(notifications, "OrganizationId"));
    if org.is_empty() {
        return Err(malformed("SOAP message", "no OrganizationId".into()));
    }
    if let Some(expected) = expected_org
        && !same_sf_id(&org, expected)
    {
        return Err(EventError::WrongOrganization { got: org });
    }
    let action = text(child(notifications, "ActionId"));
    let mut events = Vec::new();
    for n in notifications
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "Notification")
    {
        let id = text(child(n, "Id"));
        let sobject = child(n, "sObject").ok_or_else(|| {
            malformed("Notification", format!("notification {id} has no sObject"))
        })?;
        if id.is_empty() {
            return Err(malformed("Notification", "a notification has no Id".into()));
        }
        let mut record = Map::new();
        let ty = attr(sobject, "type")
            .map(|t| t.rsplit(':').next().unwrap_or(&t).to_string())
            .unwrap_or_default();
        record.insert("type".into(), Value::String(ty));
        for f in sobject.children().filter(|c| c.is_element()) {
            let v = if attr(f, "nil").as_deref() == Some("true") {
                Value::Null
            } else {
                Value::String(
                    f.descendants()
                        .filter(|d| d.is_text())
                        .filter_map(|d| d.text())
                        .collect::<String>()
                        .trim()
                        .to_string(),
                )
            };
            record.insert(f.tag_name().name().to_string(), v);
        }
        events.push(NewEvent {
            workflow: workflow.to_string(),
            source: EventSource::Salesforce,
            dedupe_key: id.clone(),
            payload: json!({
                "record": record,
                "notification": {"id": id, "organizationId": org, "actionId": action},
            }),
        });
    }
    if events.is_empty() || events.len() > 100 {
        return Err(malformed(
            "SOAP message",
            format!("{} notifications (1 to 100 expected)", events.len()),
        ));
    }
    Ok(OutboundMessage {
        organization_id: org,
        action_id: action,
        events,
    })
}

/// Salesforce ids compare on their first 15 characters (the 18-character form adds a checksum).
/// By characters, not bytes: the id comes from a webhook body and may hold anything.
fn same_sf_id(a: &str, b: &str) -> bool {
    a.chars().take(15).eq(b.chars().take(15))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The acknowledgement of an outbound message.
pub const SALESFORCE_ACK: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;

/// A SOAP 1.1 fault with `message` (XML-escaped).
pub fn soap_fault(message: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>soapenv:Client</faultcode><faultstring>{}</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#,
        xml_escape(message)
    )
}

/// A ServiceNow call: the posted record of `table`, deduplicated on `sys_id` + `sys_updated_on`
/// (the same record updated later is a new event).
pub fn servicenow_event(workflow: &str, table: &str, body: &Value) -> Result<NewEvent, EventError> {
    // A business rule may post the record itself or `{"record": {...}}`.
    let record = body.get("record").filter(|r| r.is_object()).unwrap_or(body);
    let Some(obj) = record.as_object() else {
        return Err(EventError::Malformed {
            what: "ServiceNow record",
            detail: "the body is not a JSON object".into(),
        });
    };
    let sys_id = obj
        .get("sys_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if sys_id.is_empty() {
        return Err(EventError::Malformed {
            what: "ServiceNow record",
            detail: "no sys_id".into(),
        });
    }
    let updated = obj
        .get("sys_updated_on")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // Fields are strings (docs/design/salesforce-servicenow-api.md §3.3): a reference rendered as
    // `{"link","value"}` (the Table API's default form, which a rule may post as is) becomes its
    // sys_id.
    let record: serde_json::Map<String, Value> = obj
        .iter()
        .map(|(k, v)| {
            let flat = match v {
                Value::Object(r) if r.contains_key("link") => {
                    r.get("value").cloned().unwrap_or(Value::Null)
                }
                other => other.clone(),
            };
            (k.clone(), flat)
        })
        .collect();
    Ok(NewEvent {
        workflow: workflow.to_string(),
        source: EventSource::ServiceNow,
        dedupe_key: format!("{sys_id}@{updated}"),
        payload: json!({"record": record, "table": table}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &str, msg: &str) -> String {
        let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(msg.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn qualtrics_signature_and_survey_are_checked() {
        let msg = r#"{"Status":"Complete","SurveyID":"SV_1","ResponseID":"R_9"}"#;
        let topic = "surveyengine.completedResponse.SV_1";
        let good = sign("k", msg);
        let e = qualtrics_event("wf", "SV_1", "k", topic, msg, &good).unwrap();
        let QualtricsInbound::Event(e) = e else {
            panic!("not an event")
        };
        assert_eq!(e.dedupe_key, "R_9");
        assert_eq!(e.payload[QUALTRICS_MSG]["SurveyID"], "SV_1");
        assert_eq!(
            qualtrics_event("wf", "SV_1", "other", topic, msg, &good),
            Err(EventError::BadSignature)
        );
        assert_eq!(
            qualtrics_event("wf", "SV_1", "k", topic, msg, "zz"),
            Err(EventError::BadSignature)
        );
        let other = qualtrics_event("wf", "SV_2", "k", topic, msg, &good).unwrap();
        assert!(matches!(other, QualtricsInbound::Ignored(_)));
        let branded = "acme.surveyengine.completedResponse.SV_1";
        let e = qualtrics_event("wf", "SV_1", "k", branded, msg, &good).unwrap();
        assert!(matches!(e, QualtricsInbound::Event(_)));
        for bad in [
            "a.b.surveyengine.completedResponse.SV_1",
            "surveyengine.partialResponse.SV_1",
            "xsurveyengine.completedResponse.SV_1",
        ] {
            let e = qualtrics_event("wf", "SV_1", "k", bad, msg, &good).unwrap();
            assert!(matches!(e, QualtricsInbound::Ignored(_)), "{bad}");
        }
    }

    const SOAP: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00Dxx0000000001EAA</OrganizationId><ActionId>04kxx0000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/60.0/00Dxx01</EnterpriseUrl>
   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/60.0/00Dxx01</PartnerUrl>
   <Notification><Id>04lxx0000000001AAA</Id>
    <sObject xsi:type="sf:Case" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>500xx0000000001AAA</sf:Id><sf:ContactEmail>pat&amp;co@example.com</sf:ContactEmail>
     <sf:Subject xsi:nil="true"/>
    </sObject></Notification>
   <Notification><Id>04lxx0000000002AAA</Id>
    <sObject xsi:type="sf:Case" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>500xx0000000002AAA</sf:Id>
    </sObject></Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#;

    #[test]
    fn outbound_message_becomes_one_event_per_notification() {
        let m = salesforce_outbound("wf", SOAP, Some("00Dxx0000000001")).unwrap();
        assert_eq!(m.events.len(), 2);
        let p = &m.events[0].payload;
        assert_eq!(p["record"]["type"], "Case");
        assert_eq!(p["record"]["Id"], "500xx0000000001AAA");
        assert_eq!(p["record"]["ContactEmail"], "pat&co@example.com");
        assert_eq!(p["record"]["Subject"], Value::Null);
        assert_eq!(p["notification"]["organizationId"], "00Dxx0000000001EAA");
        assert_eq!(m.events[1].dedupe_key, "04lxx0000000002AAA");
        let err = salesforce_outbound("wf", SOAP, Some("00Dyy0000000009EAA")).unwrap_err();
        assert!(matches!(err, EventError::WrongOrganization { .. }));
        for bad in ["", "<a>", "<notifications></notifications>", "not xml <"] {
            assert!(salesforce_outbound("wf", bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_dtd_is_refused_so_entities_cannot_expand() {
        let laughs = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE n [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;\">]>{}",
            SOAP.split_once("?>")
                .unwrap()
                .1
                .replace("pat&amp;co", "&b;")
        );
        let err = salesforce_outbound("wf", &laughs, None).unwrap_err();
        assert!(matches!(err, EventError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn organization_ids_compare_on_15_characters_whatever_they_hold() {
        assert!(same_sf_id("00Dxx0000000001EAA", "00Dxx0000000001"));
        assert!(!same_sf_id("00Dxx0000000001EAA", "00Dxx0000000002EAA"));
        // Multi-byte characters across the 15th byte must not panic.
        assert!(!same_sf_id("00Dxx000000000é1EAA", "00Dxx0000000001EAA"));
        let body = SOAP.replace("00Dxx0000000001EAA", "00Dxx00000000ééééé");
        let err = salesforce_outbound("wf", &body, Some("00Dxx0000000001EAA")).unwrap_err();
        assert!(matches!(err, EventError::WrongOrganization { .. }));
    }

    #[test]
    fn sync_events_dedupe_on_response_and_version() {
        let a = sync_response_event("wf", "SV_1", "R_1", "2026-11-30T08:00:00Z");
        assert_eq!(a.dedupe_key, "R_1@2026-11-30T08:00:00Z");
        assert_eq!(a.source, EventSource::Sync);
        assert_eq!(a.payload[QUALTRICS_MSG]["ResponseID"], "R_1");
        assert_eq!(a.payload[QUALTRICS_MSG]["SurveyID"], "SV_1");
        let b = sync_response_event("wf", "SV_1", "R_1", "2026-11-30T09:00:00Z");
        assert_ne!(a.id(), b.id());
        assert_eq!(
            a.id(),
            sync_response_event("wf", "SV_1", "R_1", "2026-11-30T08:00:00Z").id()
        );
    }

    #[test]
    fn servicenow_record_dedupes_on_id_and_update_time() {
        let body = json!({"sys_id": "abc", "sys_updated_on": "2026-11-30 08:00:00", "state": "7"});
        let e = servicenow_event("wf", "incident", &body).unwrap();
        assert_eq!(e.dedupe_key, "abc@2026-11-30 08:00:00");
        assert_eq!(e.payload["table"], "incident");
        assert!(servicenow_event("wf", "incident", &json!({"x": 1})).is_err());
        assert!(servicenow_event("wf", "incident", &json!([1])).is_err());
    }

    #[test]
    fn servicenow_references_become_their_sys_id() {
        let body = json!({"sys_id": "abc", "state": "7", "number": "INC0010001",
            "caller_id": {"link": "http://127.0.0.1:1/api/now/table/sys_user/u1", "value": "u1"},
            "assigned_to": ""});
        let e = servicenow_event("wf", "incident", &body).unwrap();
        assert_eq!(e.payload["record"]["caller_id"], "u1");
        assert_eq!(e.payload["record"]["assigned_to"], "");
        assert_eq!(e.payload["record"]["number"], "INC0010001");
    }
}
