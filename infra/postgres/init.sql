-- One database per service on the shared PostgreSQL: Prefect's, MLflow's and the feedback store.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE feedback;
