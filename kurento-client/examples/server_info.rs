//! Prints what a Kurento Media Server holds: version, modules, pipelines and their elements.
//!
//! `cargo run -p kurento-client --example server_info -- ws://127.0.0.1:8888/kurento`

use kurento_client::prelude::*;
use kurento_client::type_from_id;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8888/kurento".into());
    let kms = KurentoClient::connect(&url).await?;
    let manager = kms.server_manager();
    let info = manager.get_info().await?;
    println!("server   {url}");
    println!("version  {} ({:?})", info.version, info.r#type);
    for m in &info.modules {
        println!(
            "module   {} {} ({} factories)",
            m.name,
            m.version,
            m.factories.len()
        );
    }
    let sessions: Vec<String> = manager
        .get_sessions()
        .await?
        .into_iter()
        .filter(|s| !s.is_empty()) // KMS pads the list with empty strings
        .collect();
    println!("sessions {}", sessions.len());
    println!("memory   {} KiB", manager.get_used_memory().await?);
    let pipelines = manager.get_pipelines().await?;
    println!("pipelines {}", pipelines.len());
    for pipeline in pipelines {
        print_object(&pipeline, 0).await?;
        for child in pipeline.get_children().await? {
            print_object(&child, 1).await?;
        }
    }
    kms.close().await;
    Ok(())
}

async fn print_object(obj: &impl MediaObjectMethods, depth: usize) -> anyhow::Result<()> {
    let ty = type_from_id(obj.id()).map(|(_, t)| t).unwrap_or("?");
    let name = obj.get_name().await?;
    let tags: Vec<String> = obj
        .get_tags()
        .await?
        .into_iter()
        .map(|t| format!("{}={}", t.key, t.value))
        .collect();
    let indent = "  ".repeat(depth + 1);
    println!("{indent}{ty} {name}");
    println!("{indent}  id   {}", obj.id());
    if !tags.is_empty() {
        println!("{indent}  tags {}", tags.join(", "));
    }
    Ok(())
}
