//! The browser side served by the chat listener, over real HTTP: the widget, the JS client, the
//! agent console and the demo page, with their types, revalidation, compression and the origins
//! allowed to embed the widget.

mod support;

use support::fake_django::FakeDjango;
use support::*;

fn app(django: &FakeDjango, sessions: &str) -> TestApp {
    spawn_app(&format!("{}\n[sessions]\n{sessions}", django.config("")))
}

#[actix_rt::test]
async fn the_widget_client_console_and_demo_are_served_with_types_and_etags() {
    let django = FakeDjango::start();
    let app = app(&django, "");
    for (path, kind) in [
        ("/widget.js", "text/javascript"),
        ("/switchboard.js", "text/javascript"),
        ("/console/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/demo/", "text/html"),
    ] {
        let r = get(&app.chat_url(path)).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        let etag = r.header("etag").expect("an etag");
        let again = request(
            "GET",
            &app.chat_url(path),
            None,
            &[("If-None-Match", &etag)],
        )
        .await;
        assert_eq!(again.status, 304, "{path} revalidates");
    }
    let page = get(&app.chat_url("/console/")).await;
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    assert!(page.text.contains("console.js"));
    let demo = get(&app.chat_url("/demo/")).await;
    assert!(
        demo.text.contains("/widget.js"),
        "the demo embeds the widget"
    );

    // `/console` redirects (301) to `/console/`; the client follows it.
    let redirect = get(&app.chat_url("/console")).await;
    assert_eq!(redirect.status, 200);
    assert!(redirect.text.contains("console.js"));
    let missing = get(&app.chat_url("/console/nope.js")).await;
    assert_eq!((missing.status, missing.error_code()), (404, "not_found"));
    let post = request("POST", &app.chat_url("/widget.js"), None, &[]).await;
    assert_eq!(post.status, 405);
    app.stop().await.expect("clean stop");
}

#[actix_rt::test]
async fn scripts_go_gzipped_to_browsers_and_only_allowed_sites_may_import_them() {
    let django = FakeDjango::start();
    let app = app(&django, "allowed_origins = [\"https://shop.example.com\"]");
    let plain = get(&app.chat_url("/switchboard.js")).await;
    let gz = request(
        "GET",
        &app.chat_url("/switchboard.js"),
        None,
        &[("Accept-Encoding", "gzip, deflate, br")],
    )
    .await;
    assert_eq!(gz.header("content-encoding").as_deref(), Some("gzip"));
    let gz_len: usize = gz.header("content-length").unwrap().parse().unwrap();
    let plain_len: usize = plain.header("content-length").unwrap().parse().unwrap();
    assert!(gz_len * 2 < plain_len, "{gz_len} vs {plain_len}");
    assert!(plain.text.contains("export class SwitchboardClient"));

    let url = app.chat_url("/switchboard.js");
    let allowed = |origin: &'static str| {
        let url = url.clone();
        async move {
            request("GET", &url, None, &[("Origin", origin)])
                .await
                .header("access-control-allow-origin")
        }
    };
    assert_eq!(
        allowed("https://shop.example.com").await.as_deref(),
        Some("https://shop.example.com")
    );
    assert_eq!(allowed("https://evil.example.com").await, None);
    app.stop().await.expect("clean stop");
}
