//! Seeded survey definitions: questions of every kind, blocks, loop & merge, embedded data,
//! versions and quotas. Definitions are small and held in memory; responses are not (see
//! `responses`).

use super::account::User;
use crate::clock::MS_PER_DAY;
use crate::config::SimConfig;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// The question types the simulator generates.
pub enum QuestionKind {
    /// MC / SAVR: one answer.
    McSingle,
    /// MC / MAVR: several answers; the last choice has an "other, specify" text box.
    McMulti,
    /// Matrix / Likert / SingleAnswer: statements (rows) × scale (columns).
    MatrixLikert,
    /// TE / SL: one line of text.
    TextSingle,
    /// TE / FORM: several labelled text fields.
    TextForm,
    /// Slider / HSLIDER: one value per statement.
    Slider,
    /// MC / NPS: 0–10 plus the NPS group.
    Nps,
    /// RO / DND: a rank per item.
    RankOrder,
    /// SBS: several matrix columns side by side.
    SideBySide,
}

impl QuestionKind {
    /// Every kind, in generation order.
    pub fn all() -> [QuestionKind; 9] {
        use QuestionKind::*;
        [
            McSingle,
            McMulti,
            MatrixLikert,
            TextSingle,
            TextForm,
            Slider,
            Nps,
            RankOrder,
            SideBySide,
        ]
    }

    /// (QuestionType, Selector, SubSelector) as survey-definitions writes them.
    pub fn type_triple(self) -> (&'static str, &'static str, Option<&'static str>) {
        use QuestionKind::*;
        match self {
            McSingle => ("MC", "SAVR", Some("TX")),
            McMulti => ("MC", "MAVR", Some("TX")),
            MatrixLikert => ("Matrix", "Likert", Some("SingleAnswer")),
            TextSingle => ("TE", "SL", None),
            TextForm => ("TE", "FORM", None),
            Slider => ("Slider", "HSLIDER", None),
            Nps => ("MC", "NPS", None),
            RankOrder => ("RO", "DND", Some("TX")),
            SideBySide => ("SBS", "SBSMatrix", None),
        }
    }
}

/// A choice, a matrix statement, a scale point, a form field or a rank item.
#[derive(Clone, Debug)]
pub struct Choice {
    /// The choice's id, unique within its question (recodes may differ).
    pub id: u32,
    /// The text shown to the respondent.
    pub text: String,
    pub(crate) recode: i64,
    pub(crate) variable_name: Option<String>,
    /// "Other, please specify": answers add `QIDn_{id}_TEXT`.
    pub text_entry: bool,
}

/// One side-by-side column: its own scale over the question's rows.
#[derive(Clone, Debug)]
pub struct SbsColumn {
    /// The column's id, from 1.
    pub id: u32,
    /// The column's header text.
    pub text: String,
    /// The column's scale.
    pub answers: Vec<Choice>,
}

#[derive(Clone, Debug)]
/// A question of a survey.
pub struct Question {
    /// `QID7`
    pub qid: String,
    /// `Q7` (the DataExportTag)
    pub tag: String,
    /// What type of question it is.
    pub kind: QuestionKind,
    /// The question text.
    pub text: String,
    /// MC choices, matrix/slider/SBS statements, form fields, rank items.
    pub choices: Vec<Choice>,
    /// Matrix scale (columns).
    pub answers: Vec<Choice>,
    /// Side-by-side columns (`SideBySide` only; empty otherwise).
    pub sbs_columns: Vec<SbsColumn>,
    pub(crate) force_response: bool,
    /// The block holding the question (`BL_…`).
    pub block_id: String,
    /// Asked once per loop & merge iteration; export keys get the `{loop}_` prefix.
    pub in_loop: bool,
    /// In the trash block: in survey-definitions, never answered, absent from the legacy shape.
    pub trashed: bool,
}

#[derive(Clone, Debug)]
/// A block of a survey: questions shown together.
pub struct Block {
    /// The block id (`BL_…`).
    pub id: String,
    /// The block's name as the editor shows it.
    pub description: String,
    /// `Standard` or `Trash`
    pub kind: &'static str,
    pub(crate) question_ids: Vec<String>,
    /// Loop & merge block: the fields the loop iterates over.
    pub loop_items: Vec<String>,
}

#[derive(Clone, Debug)]
/// An embedded data field of a survey's flow.
pub struct EmbeddedField {
    /// The field name: its key in response values.
    pub name: String,
    /// The value set in the flow; empty for none.
    pub default_value: String,
    /// Values responses draw from.
    pub values: Vec<String>,
}

#[derive(Clone, Debug)]
/// A saved version of a survey.
pub struct Version {
    /// The version id.
    pub id: String,
    /// The version number, from 1.
    pub number: u32,
    /// The note the author saved with the version.
    pub description: String,
    /// The user who saved it.
    pub user_id: String,
    pub(crate) creation_ms: i64,
    /// Whether this version was published (respondents see it).
    pub published: bool,
}

#[derive(Clone, Debug)]
/// A response quota of a survey.
pub struct Quota {
    /// The quota id (`QO_…`).
    pub id: String,
    /// The quota's name.
    pub name: String,
    /// How many responses the quota allows.
    pub limit: u64,
    /// How the quota's conditions combine, e.g. `Simple`.
    pub logic_type: &'static str,
    /// The question whose first choice the quota counts.
    pub qid: String,
}

#[derive(Clone, Debug)]
/// A group of quotas.
pub struct QuotaGroup {
    /// The group id (`QG_…`).
    pub id: String,
    /// The group's name.
    pub name: String,
    pub(crate) quota_ids: Vec<String>,
    /// How a response counting for several quotas is placed, e.g. `PlaceInAll`.
    pub multi_match: &'static str,
    /// Whether the group is shared with other surveys.
    pub public: bool,
    /// Whether the group is selected in the survey's quota settings.
    pub selected: bool,
}

#[derive(Clone, Debug)]
/// A survey definition, generated from the seed.
pub struct Survey {
    /// Position in the account's survey list, from 0.
    pub idx: usize,
    /// The survey id (`SV_…`).
    pub id: String,
    /// The survey's name.
    pub name: String,
    /// The user who owns it (`UR_…`).
    pub owner_id: String,
    /// The user who created it (`UR_…`).
    pub creator_id: String,
    pub(crate) creation_ms: i64,
    pub(crate) last_modified_ms: i64,
    pub(crate) last_activated_ms: i64,
    pub(crate) last_accessed_ms: i64,
    /// Whether the survey is active (collecting responses).
    pub active: bool,
    /// Every question, in survey order.
    pub questions: Vec<Question>,
    /// Every block, in flow order.
    pub blocks: Vec<Block>,
    /// Embedded data fields set in the flow.
    pub embedded: Vec<EmbeddedField>,
    /// Saved versions, oldest first.
    pub versions: Vec<Version>,
    /// Response quotas.
    pub quotas: Vec<Quota>,
    /// Quota groups.
    pub quota_groups: Vec<QuotaGroup>,
    /// Seeded responses (indices `0..responses`).
    pub responses: u64,
    /// Per-survey sub-seed for response generation.
    pub seed: u64,
}

impl Survey {
    /// The question with id `qid` (`QID7`), if any.
    pub fn question(&self, qid: &str) -> Option<&Question> {
        self.questions.iter().find(|q| q.qid == qid)
    }

    /// Questions that can be answered (not trashed).
    pub fn live_questions(&self) -> impl Iterator<Item = &Question> {
        self.questions.iter().filter(|q| !q.trashed)
    }

    pub(crate) fn loop_items(&self) -> &[String] {
        self.blocks
            .iter()
            .find(|b| !b.loop_items.is_empty())
            .map(|b| b.loop_items.as_slice())
            .unwrap_or(&[])
    }
}

const SURVEY_NAMES: &[&str] = &[
    "Customer Satisfaction 2026",
    "Employee Pulse — Q3",
    "Net Promoter Score tracker",
    "Product feedback: \"Beta\"; DROP TABLE survey; --",
    "Encuesta de satisfacción — café ☕",
    "Onboarding experience",
    "Website usability (select * from users)",
    "Post-support ticket survey",
    "Événement annuel 2026",
    "Brand awareness",
];

const SCALE: &[&str] = &[
    "Strongly disagree",
    "Disagree",
    "Neutral",
    "Agree",
    "Strongly agree",
];

fn choices(texts: &[&str]) -> Vec<Choice> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| Choice {
            id: i as u32 + 1,
            text: t.to_string(),
            recode: i as i64 + 1,
            variable_name: None,
            text_entry: false,
        })
        .collect()
}

pub(crate) fn question(num: u32, kind: QuestionKind, r: &mut Rng, block_id: &str) -> Question {
    use QuestionKind::*;
    let (text, ch, ans, sbs): (String, Vec<Choice>, Vec<Choice>, Vec<SbsColumn>) = match kind {
        McSingle => {
            let pool: &[&[&str]] = &[
                &["Daily", "Weekly", "Monthly", "Rarely", "Never"],
                &["Yes", "No", "Not sure"],
                &["Under 18", "18–24", "25–34", "35–44", "45–64", "65+"],
                &["Email", "Phone", "Chat", "In person"],
            ];
            let opts = *r.pick(pool);
            let mut c = choices(opts);
            // Recodes are not always 1..n in real surveys.
            if r.chance(0.3) {
                for (i, x) in c.iter_mut().enumerate() {
                    x.recode = (i as i64 + 1) * 10;
                }
            }
            for x in c.iter_mut() {
                x.variable_name = Some(x.text.to_lowercase().replace(' ', "_"));
            }
            (
                r.pick(&[
                    "How often do you use our product?",
                    "Would you recommend us to a colleague?",
                    "Which age group are you in?",
                    "How did you contact us?",
                ])
                .to_string(),
                c,
                vec![],
                vec![],
            )
        }
        McMulti => {
            let mut c = choices(&["Price", "Quality", "Support", "Speed", "Design", "Other"]);
            if let Some(last) = c.last_mut() {
                last.text_entry = true;
            }
            (
                "Which of these matter to you? (select all that apply)".into(),
                c,
                vec![],
                vec![],
            )
        }
        MatrixLikert => (
            "Please rate the following statements.".into(),
            choices(&[
                "The staff were friendly",
                "Wait time was short",
                "My issue was resolved",
                "Pricing is fair",
            ]),
            choices(SCALE),
            vec![],
        ),
        TextSingle => (
            "What is the main reason for your score?".into(),
            vec![],
            vec![],
            vec![],
        ),
        TextForm => (
            "Your contact details".into(),
            choices(&["Name", "Company", "City"]),
            vec![],
            vec![],
        ),
        Slider => (
            "How likely are you to renew (0–100)?".into(),
            choices(&["Likelihood", "Confidence"]),
            vec![],
            vec![],
        ),
        Nps => (
            "How likely are you to recommend us to a friend or colleague?".into(),
            (0..=10)
                .map(|v| Choice {
                    id: v + 1,
                    text: v.to_string(),
                    recode: i64::from(v),
                    variable_name: None,
                    text_entry: false,
                })
                .collect(),
            vec![],
            vec![],
        ),
        RankOrder => (
            "Rank these features from most to least important.".into(),
            choices(&["Reports", "Integrations", "Mobile app", "Security"]),
            vec![],
            vec![],
        ),
        SideBySide => (
            "For each service, rate its importance and your satisfaction.".into(),
            choices(&["Delivery", "Returns", "Billing"]),
            vec![],
            vec![
                SbsColumn {
                    id: 1,
                    text: "Importance".into(),
                    answers: choices(&["Low", "Medium", "High"]),
                },
                SbsColumn {
                    id: 2,
                    text: "Satisfaction".into(),
                    answers: choices(&["Unhappy", "OK", "Happy"]),
                },
            ],
        ),
    };
    Question {
        qid: format!("QID{num}"),
        tag: format!("Q{num}"),
        kind,
        text,
        choices: ch,
        answers: ans,
        sbs_columns: sbs,
        force_response: r.chance(0.4),
        block_id: block_id.to_string(),
        in_loop: false,
        trashed: false,
    }
}

fn build_survey(cfg: &SimConfig, users: &[User], idx: usize) -> Survey {
    let mut r = Rng::derive(cfg.seed, &[0x5EE, idx as u64]);
    let id = format!("SV_{}", r.alnum(15));
    let owner = &users[0];
    let creator = if idx % 3 == 2 && users.len() > 4 {
        &users[4]
    } else {
        owner
    };
    let base_name = SURVEY_NAMES[idx % SURVEY_NAMES.len()];
    let name = if idx < SURVEY_NAMES.len() {
        base_name.to_string()
    } else {
        format!("{base_name} #{}", idx / SURVEY_NAMES.len() + 1)
    };
    let creation_ms = cfg.history_start_ms() - r.range(30, 400) * MS_PER_DAY;
    let last_modified_ms = cfg.start_ms - r.range(1, 25) * MS_PER_DAY - r.range(0, 86_399) * 1000;

    let intro = format!("BL_{}", r.alnum(15));
    let main = format!("BL_{}", r.alnum(15));
    let looped = format!("BL_{}", r.alnum(15));
    let trash = format!("BL_{}", r.alnum(15));

    // One question of each kind, then filler so the survey has `cfg.questions` live questions.
    let mut questions = Vec::new();
    let mut num = 1u32;
    for kind in QuestionKind::all() {
        let block = if num <= 2 { &intro } else { &main };
        questions.push(question(num, kind, &mut r, block));
        num += 1;
    }
    let fillers = [
        QuestionKind::McSingle,
        QuestionKind::MatrixLikert,
        QuestionKind::Nps,
        QuestionKind::McMulti,
    ];
    while questions.len() < cfg.questions.saturating_sub(1).max(9) {
        let kind = *r.pick(&fillers);
        questions.push(question(num, kind, &mut r, &main));
        num += 1;
    }
    // The loop & merge block: one MC question asked for each item.
    let mut lq = question(num, QuestionKind::McSingle, &mut r, &looped);
    lq.text = "How satisfied are you with ${lm://Field/1}?".into();
    lq.choices = choices(&["Very unhappy", "Unhappy", "Neutral", "Happy", "Very happy"]);
    lq.in_loop = true;
    questions.push(lq);
    num += 1;
    // A trashed question: in survey-definitions only.
    let mut tq = question(num, QuestionKind::TextSingle, &mut r, &trash);
    tq.text = "Old question (deleted)".into();
    tq.trashed = true;
    questions.push(tq);

    let in_block = |b: &str| -> Vec<String> {
        questions
            .iter()
            .filter(|q| q.block_id == b)
            .map(|q| q.qid.clone())
            .collect()
    };
    let blocks = vec![
        Block {
            id: intro.clone(),
            description: "Intro".into(),
            kind: "Standard",
            question_ids: in_block(&intro),
            loop_items: vec![],
        },
        Block {
            id: main.clone(),
            description: "Main questions".into(),
            kind: "Standard",
            question_ids: in_block(&main),
            loop_items: vec![],
        },
        Block {
            id: looped.clone(),
            description: "Per product (loop & merge)".into(),
            kind: "Standard",
            question_ids: in_block(&looped),
            loop_items: vec!["Coffee".into(), "Tea".into(), "Juice".into()],
        },
        Block {
            id: trash.clone(),
            description: "Trash / Unused Questions".into(),
            kind: "Trash",
            question_ids: in_block(&trash),
            loop_items: vec![],
        },
    ];

    let mut embedded = vec![
        EmbeddedField {
            name: "segment".into(),
            default_value: "2".into(),
            values: vec!["1".into(), "2".into(), "3".into()],
        },
        EmbeddedField {
            name: "region".into(),
            default_value: "".into(),
            values: vec!["EMEA".into(), "AMER".into(), "APAC".into()],
        },
        EmbeddedField {
            name: "customer tier".into(),
            default_value: "".into(),
            values: vec!["gold".into(), "silver".into(), "bronze".into()],
        },
    ];
    if idx % 2 == 1 {
        embedded.push(EmbeddedField {
            name: "order_id".into(),
            default_value: "".into(),
            values: vec![],
        });
    }

    let versions = (1..=3)
        .map(|n| Version {
            id: format!("{}", 9_000_000_000u64 + r.below(999_999_999)),
            number: n,
            description: ["First draft", "Added NPS", "Published for launch"][n as usize - 1]
                .into(),
            user_id: owner.id.clone(),
            creation_ms: creation_ms + i64::from(n) * 3 * MS_PER_DAY,
            published: n != 1,
        })
        .collect();

    let gender_like = questions
        .iter()
        .find(|q| q.kind == QuestionKind::McSingle)
        .map(|q| q.qid.clone())
        .unwrap_or_default();
    let quotas: Vec<Quota> = (0..2)
        .map(|i| Quota {
            id: format!("QO_{}", r.alnum(15)),
            name: ["First option quota", "Completes cap"][i].into(),
            limit: [cfg.responses / 3 + 1, cfg.responses + 100][i],
            logic_type: ["Simple", "Simple"][i],
            qid: gender_like.clone(),
        })
        .collect();
    let quota_groups = vec![QuotaGroup {
        id: format!("QG_{}", r.alnum(15)),
        name: "Default Quota Group".into(),
        quota_ids: quotas.iter().map(|q| q.id.clone()).collect(),
        multi_match: "PlaceInAll",
        public: false,
        selected: true,
    }];

    Survey {
        idx,
        id,
        name,
        owner_id: owner.id.clone(),
        creator_id: creator.id.clone(),
        creation_ms,
        last_modified_ms,
        last_activated_ms: creation_ms + 10 * MS_PER_DAY,
        last_accessed_ms: cfg.start_ms - r.range(1, 48) * 3_600_000,
        active: idx % 7 != 6,
        questions,
        blocks,
        embedded,
        versions,
        quotas,
        quota_groups,
        responses: cfg.responses,
        seed: r.next_u64(),
    }
}

pub(crate) fn seed_surveys(cfg: &SimConfig, users: &[User]) -> Vec<Survey> {
    (0..cfg.surveys)
        .map(|i| build_survey(cfg, users, i))
        .collect()
}
