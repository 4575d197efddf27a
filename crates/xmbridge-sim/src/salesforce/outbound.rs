//! Outbound messages (Salesforce → us): `POST /_sim/outbound` sends the SOAP `notifications`
//! message of the contract's section 2.8 to a loopback endpoint, expects
//! `<Ack>true</Ack>`, retries with doubling intervals while not acknowledged, and records every
//! attempt (`GET /_sim/outbound/deliveries`). Delivery is at-least-once, as in Salesforce.

use super::SharedSf;
use parking_lot::Mutex;
use serde::Serialize;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Clone, Debug, Serialize)]
/// One try at delivering an outbound message.
pub struct Attempt {
    /// When it was made, simulated epoch milliseconds.
    pub at_ms: i64,
    /// HTTP status of the listener's answer; `None` if it got no answer.
    pub status: Option<u16>,
    /// Whether the answer was a SOAP acknowledgement (`<Ack>true</Ack>`).
    pub acked: bool,
    /// Why the try failed; `None` when it got an answer.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
/// One outbound message (workflow notification) and its delivery tries.
pub struct Delivery {
    /// The message id.
    pub id: String,
    /// The notification id the SOAP body carries.
    pub notification_id: String,
    /// The object of the record the message is about.
    pub object: String,
    /// The record the message is about.
    pub record_id: String,
    /// The listener URL.
    pub endpoint: String,
    /// Every try so far, oldest first.
    pub attempts: Vec<Attempt>,
    /// Whether the listener acknowledged the message.
    pub acked: bool,
    /// Acked, or gave up after `max_attempts`.
    pub finished: bool,
}

#[derive(Default)]
/// The org's outbound messages.
pub struct OutboundState {
    /// Every message, in sending order.
    pub deliveries: Mutex<Vec<Delivery>>,
    /// Woken whenever a delivery changes, so tests can wait for one.
    pub changed: Notify,
}

/// What to send and how hard to try.
#[derive(Clone, Debug)]
pub struct OutboundRequest {
    /// The object of the record.
    pub object: String,
    /// The record id.
    pub record_id: String,
    /// The listener URL.
    pub endpoint: String,
    /// The record fields sent, as (name, value).
    pub fields: Vec<(String, String)>,
    /// Tries before giving up.
    pub max_attempts: u32,
    /// Wait before the first retry, milliseconds; later retries back off from it.
    pub retry_base_ms: u64,
    /// Whether to include a session id the listener can call back with.
    pub send_session_id: bool,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The SOAP 1.1 envelope with one notification.
pub fn soap_message(
    org_id: &str,
    action_id: &str,
    session_id: Option<&str>,
    base_url: &str,
    notification_id: &str,
    object: &str,
    fields: &[(String, String)],
) -> String {
    let org15: String = org_id.chars().take(15).collect();
    let session = match session_id {
        Some(s) => format!("<SessionId>{}</SessionId>", xml_escape(s)),
        None => "<SessionId xsi:nil=\"true\"/>".to_string(),
    };
    let body: String = fields
        .iter()
        .map(|(k, v)| format!("<sf:{k}>{}</sf:{k}>", xml_escape(v)))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
<soapenv:Body><notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\">\
<OrganizationId>{org_id}</OrganizationId><ActionId>{action_id}</ActionId>{session}\
<EnterpriseUrl>{base_url}/services/Soap/c/60.0/{org15}</EnterpriseUrl>\
<PartnerUrl>{base_url}/services/Soap/u/60.0/{org15}</PartnerUrl>\
<Notification><Id>{notification_id}</Id>\
<sObject xsi:type=\"sf:{object}\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">{body}</sObject>\
</Notification></notifications></soapenv:Body></soapenv:Envelope>"
    )
}

/// True for an acknowledgement body: `<Ack>true</Ack>` with or without a namespace prefix.
pub fn is_ack(body: &str) -> bool {
    let compact: String = body.split_whitespace().collect();
    compact.contains("Ack>true</")
}

/// Records the delivery and starts sending it in the background; returns the delivery id.
pub fn start(
    sim: &SharedSf,
    req: OutboundRequest,
    delivery_id: String,
    notification_id: String,
    action_id: String,
    session_id: Option<String>,
) {
    sim.outbound.deliveries.lock().push(Delivery {
        id: delivery_id.clone(),
        notification_id: notification_id.clone(),
        object: req.object.clone(),
        record_id: req.record_id.clone(),
        endpoint: req.endpoint.clone(),
        attempts: Vec::new(),
        acked: false,
        finished: false,
    });
    let sim = sim.clone();
    tokio::spawn(async move {
        let xml = soap_message(
            &sim.org_id,
            &action_id,
            session_id.as_deref(),
            &sim.base_url(),
            &notification_id,
            &req.object,
            &req.fields,
        );
        let mut delay = req.retry_base_ms.max(1);
        for attempt in 1..=req.max_attempts.max(1) {
            let sent = sim
                .http
                .post(&req.endpoint)
                .header("Content-Type", "text/xml; charset=utf-8")
                .header("SOAPAction", "\"\"")
                .body(xml.clone())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let (status, acked, error) = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    (Some(status), status == 200 && is_ack(&text), None)
                }
                Err(e) => (None, false, Some(e.to_string())),
            };
            let done = acked || attempt == req.max_attempts.max(1);
            {
                let mut ds = sim.outbound.deliveries.lock();
                if let Some(d) = ds.iter_mut().find(|d| d.id == delivery_id) {
                    d.attempts.push(Attempt {
                        at_ms: sim.clock.now_ms(),
                        status,
                        acked,
                        error,
                    });
                    d.acked = acked;
                    d.finished = done;
                }
            }
            sim.outbound.changed.notify_waiters();
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(delay)).await;
            delay = delay.saturating_mul(2);
        }
    });
}

/// Waits until the delivery is finished or `timeout` passes; returns it.
pub async fn wait_finished(sim: &SharedSf, id: &str, timeout: Duration) -> Option<Delivery> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = sim.outbound.changed.notified();
        let current = sim
            .outbound
            .deliveries
            .lock()
            .iter()
            .find(|d| d.id == id)
            .cloned();
        match current {
            None => return None,
            Some(d) if d.finished => return Some(d),
            Some(d) => {
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Some(d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_the_contract_shape() {
        let xml = soap_message(
            "00D5g0000000001AAA",
            "04k5g0000000001AAA",
            None,
            "http://127.0.0.1:1",
            "04l5g0000000001AAA",
            "Case",
            &[
                ("Id".into(), "5005g".into()),
                ("Subject".into(), "a<b".into()),
            ],
        );
        assert!(xml.contains("<notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\">"));
        assert!(xml.contains("<SessionId xsi:nil=\"true\"/>"));
        assert!(xml.contains("xsi:type=\"sf:Case\""));
        assert!(xml.contains("<sf:Subject>a&lt;b</sf:Subject>"));
        assert!(is_ack(
            "<notificationsResponse><Ack>true</Ack></notificationsResponse>"
        ));
        assert!(is_ack("<ns:Ack> true </ns:Ack>"));
        assert!(!is_ack("<Ack>false</Ack>"));
    }
}
