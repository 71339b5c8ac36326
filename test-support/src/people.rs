//! A browser-like client for the people routes: it keeps the session cookie the server sets and sends
//! the `Origin` a browser on the instance would send.

use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};

use crate::TestApp;

pub const PASSWORD: &str = "correct horse battery staple";

/// The `appstrate_session` cookie set by a response, as `name=value`, and the whole `Set-Cookie` line.
pub fn session_set_cookie(res: &Response) -> Option<(String, String)> {
    res.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("appstrate_session="))
        .map(|line| {
            let pair = line.split(';').next().unwrap_or("").to_string();
            (pair, line.to_string())
        })
}

/// One person's browser on the test server.
#[derive(Clone)]
pub struct Browser {
    pub client: reqwest::Client,
    pub base: String,
    /// The `Origin` sent with every request (the instance's `APP_URL` origin by default).
    pub origin: String,
    /// `appstrate_session=<value>`, once signed in.
    pub cookie: Option<String>,
    pub email: String,
}

impl Browser {
    pub fn new(app: &TestApp, email: &str) -> Self {
        let origin = app
            .env
            .get("APP_URL")
            .cloned()
            .unwrap_or_else(|| app.address.clone());
        Self {
            client: app.client.clone(),
            base: app.address.clone(),
            origin: origin.trim_end_matches('/').to_string(),
            cookie: None,
            email: email.to_string(),
        }
    }

    /// A request with the cookie and the `Origin`.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .header("Origin", &self.origin);
        if let Some(c) = &self.cookie {
            r = r.header("Cookie", c);
        }
        r
    }

    /// Keeps the session cookie a response sets (an empty value signs out).
    pub fn remember(&mut self, res: &Response) {
        if let Some((pair, _)) = session_set_cookie(res) {
            self.cookie = if pair == "appstrate_session=" {
                None
            } else {
                Some(pair)
            };
        }
    }

    pub async fn sign_up(&mut self) -> Value {
        let r = self
            .req(Method::POST, "/api/auth/sign-up/email")
            .json(&json!({"email": self.email, "password": PASSWORD, "name": self.email.split('@').next()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "sign-up of {}", self.email);
        self.remember(&r);
        assert!(self.cookie.is_some(), "sign-up sets the session cookie");
        r.json().await.unwrap()
    }

    pub async fn sign_in(&mut self, password: &str) -> Response {
        let r = self
            .req(Method::POST, "/api/auth/sign-in/email")
            .json(&json!({"email": self.email, "password": password}))
            .send()
            .await
            .unwrap();
        self.remember(&r);
        r
    }

    /// GET returning (status, JSON body or null).
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut r = self.req(Method::GET, path);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let res = r.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// A JSON request returning (status, JSON body or null).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.req(method, path);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

/// What a social sign-in through the real redirects ended with.
pub struct SocialSignIn {
    /// The status of the callback answer (302 on success, an error page otherwise).
    pub status: u16,
    /// The callback answer's `Location` (APP_URL/ on success).
    pub location: Option<String>,
    /// The callback answer's body (the error page on failure).
    pub body: String,
    /// The callback URL the provider sent the browser to (to replay it).
    pub callback_url: String,
    /// The state cookie the sign-in start set.
    pub state_cookie: Option<String>,
}

/// A client that does not follow redirects, to walk them one by one.
pub fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(res: &Response) -> Option<String> {
    res.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Browser {
    /// `GET /api/auth/sign-in/<provider>` → provider authorize (auto-consent) → callback, with
    /// `rewrite` applied to the callback URL first (to tamper with the state). Keeps the session cookie.
    pub async fn social_sign_in(
        &mut self,
        provider: &str,
        rewrite: impl FnOnce(String) -> String,
    ) -> SocialSignIn {
        let http = no_redirect_client();
        let start = http
            .get(format!("{}/api/auth/sign-in/{provider}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            start.status(),
            302,
            "sign-in start: {}",
            start.text().await.unwrap_or_default()
        );
        let state_cookie = start
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("appstrate_oauth_state="))
            .map(|v| v.split(';').next().unwrap().to_string());
        let authorize = location(&start).expect("a redirect to the provider");
        let consent = http.get(&authorize).send().await.unwrap();
        assert_eq!(consent.status(), 303, "provider authorize");
        let callback_url = rewrite(location(&consent).expect("a redirect back"));
        self.finish_callback(&callback_url, state_cookie).await
    }

    /// Opens a callback URL (with the state cookie) as the browser would.
    pub async fn finish_callback(
        &mut self,
        callback_url: &str,
        state_cookie: Option<String>,
    ) -> SocialSignIn {
        // The provider redirects to APP_URL; the test server listens at `base`.
        let url = callback_url.replacen(&self.origin, &self.base, 1);
        let mut req = no_redirect_client().get(&url);
        if let Some(c) = &state_cookie {
            req = req.header("Cookie", c);
        }
        let res = req.send().await.unwrap();
        self.remember(&res);
        SocialSignIn {
            status: res.status().as_u16(),
            location: location(&res),
            callback_url: callback_url.to_string(),
            state_cookie,
            body: res.text().await.unwrap_or_default(),
        }
    }
}
