"""Services from the Netmaker operator guide (../shared/seeds), shared by the
tests that must accept them unchanged."""

GUIDE_EXAMPLE_3 = """
apiVersion: v1
kind: Service
metadata:
  name: my-app-service
  namespace: default
  uid: 6f1c7a52-1111-4c1e-9d57-0a1b2c3d4e5f
  annotations:
    netmaker.io/ingress: "enabled"
    netmaker.io/ingress-dns-name: "app.netmaker.internal"
spec:
  ports:
  - name: http
    port: 80
    targetPort: 8080
    protocol: TCP
  - name: https
    port: 443
    targetPort: 8443
    protocol: TCP
  selector:
    app: my-app
  type: ClusterIP
"""
