-- Run once, when the volume is empty. Each service owns its database and migrates
-- it itself (Alembic) on start; guardrails and reach keep no data.
CREATE DATABASE registry;
CREATE DATABASE providers;
CREATE DATABASE runner;
CREATE DATABASE files;
CREATE DATABASE traces;
CREATE DATABASE triggers;
